"""Will training this language model fit in memory? An estimate made before any weight is loaded.

    >>> check_training_memory("models/smollm2", batch_size=4, block_size=256, optimizer="adamw")
    MemoryEstimate(...)          # or ConfigError: "training ... needs about 9.3 GB ... available 3.1 GB; ..."

What is counted (bytes):
- weights: every parameter, in the model's dtype (float32: 4, bfloat16: 2);
- gradients: the trainable parameters (all of them, or what a method such as LoRA leaves trainable);
- optimizer state: Adam/AdamW keep 2 tensors per trainable parameter, SGD with momentum 1, plain SGD none
  (torch keeps them in the parameters' dtype);
- activations kept for the backward pass: per layer about (10 x hidden + 3 x intermediate) values per token
  plus the attention matrix (2 x heads x block^2 per sequence), and the logits (3 x vocab per token: the
  logits, their log-softmax and its gradient, in float32). With gradient checkpointing only each layer's input
  is kept, and one layer's activations are rebuilt at a time;
- evaluation: the logits of an evaluation batch (no gradients), while weights and optimizer state stay.

The activation terms are rough (they depend on the attention kernel and the architecture): take the result
as +-30%. The parameter count is exact: the model is built on PyTorch's `meta` device, which allocates
nothing, and the methods that choose what trains (LoRA, frozen layers) are applied to that copy.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lifelong.errors import ConfigError

__all__ = [
    "MemoryEstimate",
    "available_memory",
    "check_training_memory",
    "count_parameters",
    "estimate_training_memory",
]

GB = 1024**3
_OPTIMIZER_STATES = {"adam": 2, "adamw": 2}


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes a training run needs (see the module's docstring for what each term counts)."""

    parameters: int
    trainable: int
    weights: int
    gradients: int
    optimizer: int
    activations: int
    evaluation: int
    available: int | None  # bytes free on `device` now, or None where that cannot be measured
    device: str

    @property
    def training(self) -> int:
        """Bytes during a training step."""
        return self.weights + self.gradients + self.optimizer + self.activations

    @property
    def peak(self) -> int:
        """The larger of a training step and an evaluation pass (gradients may still be held then)."""
        return max(self.training, self.weights + self.gradients + self.optimizer + self.evaluation)

    @property
    def fits(self) -> bool:
        return self.available is None or self.peak <= self.available

    def describe(self) -> str:
        """One line: the peak and its parts, in GB."""

        def gb(n: int) -> str:
            return f"{n / GB:.2f}"

        where = f"; {gb(self.available)} GB available on {self.device}" if self.available is not None else ""
        return (
            f"about {gb(self.peak)} GB (weights {gb(self.weights)}, gradients {gb(self.gradients)}, "
            f"optimizer state {gb(self.optimizer)}, activations {gb(self.activations)}, evaluation "
            f"{gb(self.evaluation)}; {self.trainable:,} of {self.parameters:,} parameters train){where}"
        )


def _config_of(model: Any) -> Any:
    """The transformers config of a path, a config, a `CausalLM` or a transformers model."""
    if isinstance(model, str | os.PathLike):
        from lifelong.lm.hf import causal_lm_config

        return causal_lm_config(model)
    config = getattr(model, "config", None)
    if isinstance(model, nn.Module):
        if config is None:
            raise ConfigError(
                f"{type(model).__name__} has no Hugging Face config; the memory estimate is for transformers "
                "causal LMs (pass the model's folder, its config, or a CausalLM)"
            )
        return config
    if not hasattr(model, "model_type"):
        raise ConfigError(
            f"cannot estimate memory from a {type(model).__name__}; pass a model folder, a transformers "
            "config or a CausalLM"
        )
    return model


def _meta_model(config: Any) -> nn.Module:
    """The model of `config` with no memory behind its tensors, wrapped as the learner sees it."""
    from transformers import AutoModelForCausalLM

    from lifelong.lm.causal_lm import CausalLM

    config = _without_quantization(config)
    with torch.device("meta"):
        return CausalLM(AutoModelForCausalLM.from_config(config))


def _without_quantization(config: Any) -> Any:
    if getattr(config, "quantization_config", None) is None:
        return config
    import copy

    config = copy.deepcopy(config)
    del config.quantization_config  # a GGUF model loads dequantized: float weights
    return config


def count_parameters(model: Any, methods: Sequence[Any] = ()) -> tuple[int, int]:
    """(all, trainable) parameters of `model` (a folder, a config, a CausalLM or a transformers model) once
    `methods` (e.g. `[LoRA(rank=8)]`) have chosen what trains; shared (tied) weights count once."""
    meta = _meta_model(_config_of(model))
    for method in methods:
        if getattr(method, "selects_trainable", False) or _has_setup(method):
            method.setup(meta)  # adapters are added and weights frozen on the meta copy only
    params = list(meta.parameters())  # unique: a tied head and embedding are one parameter
    return sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad)


def _has_setup(method: Any) -> bool:
    from lifelong.methods.base import Method, overrides

    return isinstance(method, Method) and overrides(method, "setup")


def _activations(config: Any, batch: int, block: int, act_bytes: int, checkpointing: bool) -> int:
    h = int(config.hidden_size)
    layers = int(config.num_hidden_layers)
    inter = int(getattr(config, "intermediate_size", None) or getattr(config, "n_inner", None) or 4 * h)
    heads = int(config.num_attention_heads)
    tokens = batch * block
    per_layer = tokens * (10 * h + 3 * inter) + 2 * batch * heads * block * block
    kept = layers * tokens * h + per_layer if checkpointing else layers * per_layer
    logits = 3 * tokens * int(config.vocab_size) * 4
    return kept * act_bytes + logits


def _evaluation(config: Any, batch: int, block: int, act_bytes: int) -> int:
    tokens = batch * block
    h = int(config.hidden_size)
    inter = int(getattr(config, "intermediate_size", None) or getattr(config, "n_inner", None) or 4 * h)
    layer = tokens * (10 * h + 3 * inter) + 2 * batch * int(config.num_attention_heads) * block * block
    # logits in the model's dtype plus the float32 log-softmax of the loss
    return layer * act_bytes + tokens * int(config.vocab_size) * (act_bytes + 4)


def _check_options(batch_size: int, block_size: int, optimizer: str, dtype: str) -> None:
    from lifelong.lm.hf import torch_dtype

    torch_dtype(dtype)
    if batch_size < 1 or block_size < 1:
        raise ConfigError(f"batch_size and block_size must be at least 1, got {batch_size} and {block_size}")
    if optimizer not in ("sgd", "adam", "adamw"):
        raise ConfigError(f"optimizer {optimizer!r} is unknown; use sgd, adam or adamw")


def estimate_training_memory(
    model: str | os.PathLike[str] | Any,
    *,
    batch_size: int,
    block_size: int,
    dtype: str = "float32",
    optimizer: str = "adamw",
    momentum: float = 0.0,
    methods: Sequence[Any] = (),
    gradient_checkpointing: bool = False,
    precision: str = "fp32",
    eval_batch_size: int | None = None,
    device: str = "cpu",
) -> MemoryEstimate:
    """The memory a training run of `model` needs, without loading its weights.

    `model`: a model folder or .gguf file, a transformers config, or a loaded `CausalLM`. `batch_size`,
    `block_size`: sequences per step and tokens per sequence. `dtype`: the weights' dtype ("float32" or
    "bfloat16"). `optimizer` ("sgd", "adam", "adamw") and `momentum` (SGD): the optimizer state.
    `methods`: the run's methods; those that choose the trainable weights (LoRA) are applied to a meta copy.
    `gradient_checkpointing`, `precision` ("bf16": activations in bfloat16 under autocast): as in
    `TrainConfig`. `eval_batch_size`: sequences per evaluation batch (default: `batch_size`).
    `device`: where the run trains; `available` is measured there.
    """
    _check_options(batch_size, block_size, optimizer, dtype)
    config = _config_of(model)
    parameters, trainable = count_parameters(config, methods)
    return _estimate(
        config,
        parameters,
        trainable,
        batch_size=batch_size,
        block_size=block_size,
        dtype=dtype,
        optimizer=optimizer,
        momentum=momentum,
        gradient_checkpointing=gradient_checkpointing,
        precision=precision,
        eval_batch_size=eval_batch_size,
        device=device,
    )


def _estimate(
    config: Any,
    parameters: int,
    trainable: int,
    *,
    batch_size: int,
    block_size: int,
    dtype: str,
    optimizer: str,
    momentum: float,
    gradient_checkpointing: bool,
    precision: str,
    eval_batch_size: int | None,
    device: str | None,
) -> MemoryEstimate:
    param_bytes = 2 if dtype == "bfloat16" else 4
    act_bytes = 2 if dtype == "bfloat16" or precision == "bf16" else 4
    states = _OPTIMIZER_STATES.get(optimizer, 1 if momentum > 0 else 0)
    return MemoryEstimate(
        parameters=parameters,
        trainable=trainable,
        weights=parameters * param_bytes,
        gradients=trainable * param_bytes,
        optimizer=trainable * param_bytes * states,
        activations=_activations(config, batch_size, block_size, act_bytes, gradient_checkpointing),
        evaluation=_evaluation(config, eval_batch_size or batch_size, block_size, act_bytes),
        available=available_memory(device) if device is not None else None,
        device=device or "",
    )


def _cgroup_available() -> int | None:
    """Memory left under a container's cgroup (v2) limit, which psutil does not see."""
    root = Path("/sys/fs/cgroup")
    try:
        limit = (root / "memory.max").read_text().strip()
        used = int((root / "memory.current").read_text().strip())
    except (OSError, ValueError):
        return None
    return None if limit == "max" else max(0, int(limit) - used)


def available_memory(device: str = "cpu") -> int | None:
    """Bytes free for a new allocation on `device` now: free GPU memory on CUDA, available RAM (within a
    container's limit) on the CPU; None where it cannot be measured (e.g. MPS)."""
    target = torch.device(device)
    if target.type == "cuda":
        if not torch.cuda.is_available():
            return None
        free, _total = torch.cuda.mem_get_info(target)
        return int(free)
    if target.type != "cpu":
        return None
    found: list[int] = []
    try:
        import psutil

        found.append(int(psutil.virtual_memory().available))
    except ImportError:
        try:
            for line in Path("/proc/meminfo").read_text().splitlines():
                if line.startswith("MemAvailable:"):
                    found.append(int(line.split()[1]) * 1024)
        except OSError:
            pass
    cgroup = _cgroup_available()
    if cgroup is not None:
        found.append(cgroup)
    return min(found) if found else None


def check_training_memory(
    model: str | os.PathLike[str] | Any,
    *,
    batch_size: int,
    block_size: int,
    dtype: str = "float32",
    optimizer: str = "adamw",
    momentum: float = 0.0,
    methods: Sequence[Any] = (),
    gradient_checkpointing: bool = False,
    precision: str = "fp32",
    eval_batch_size: int | None = None,
    device: str = "cpu",
) -> MemoryEstimate:
    """`estimate_training_memory` (same arguments), raising ConfigError when the run will not fit on `device`
    with the estimate and the changes that would make it fit. Returns the estimate when it fits (or when
    the free memory cannot be measured). Call it with the run's config before loading the model:

        >>> check_training_memory(folder, batch_size=cfg.train.batch_size, block_size=cfg.stream.block_size,
        ...                       dtype=cfg.model.dtype, optimizer=cfg.train.optimizer,
        ...                       momentum=cfg.train.momentum, methods=build_methods(cfg),
        ...                       gradient_checkpointing=cfg.train.gradient_checkpointing,
        ...                       precision=cfg.train.precision, eval_batch_size=cfg.train.eval_batch_size,
        ...                       device=cfg.train.device)
    """
    options: dict[str, Any] = {
        "batch_size": batch_size,
        "block_size": block_size,
        "dtype": dtype,
        "optimizer": optimizer,
        "momentum": momentum,
        "gradient_checkpointing": gradient_checkpointing,
        "precision": precision,
        "eval_batch_size": eval_batch_size,
    }
    estimate = estimate_training_memory(model, methods=methods, device=device, **options)
    if estimate.fits:
        return estimate
    config = _config_of(model)
    name = getattr(config, "_name_or_path", "") or getattr(config, "model_type", "model")
    fixes = _fixes(config, estimate, options, chooses_trainable=any(_chooses(m) for m in methods))
    raise ConfigError(
        f"training {Path(str(name)).name or name} with batch_size {batch_size} x block_size {block_size} "
        f"needs {estimate.describe()}. Ways to fit: {'; '.join(fixes)}"
    )


def _chooses(method: Any) -> bool:
    return bool(getattr(method, "selects_trainable", False))


def _fixes(
    config: Any, estimate: MemoryEstimate, options: dict[str, Any], chooses_trainable: bool
) -> list[str]:
    """The changes that lower the estimate, each with the peak it would give."""

    def peak(trainable: int = estimate.trainable, **change: Any) -> int:
        return _estimate(config, estimate.parameters, trainable, **{**options, **change}, device=None).peak

    fixes: list[tuple[int, str]] = []  # (peak, text): the most effective first
    if not chooses_trainable:
        from lifelong.methods.lora import LoRA

        _, adapters = count_parameters(config, [LoRA()])
        fixes.append((peak(adapters), "train LoRA adapters instead of every weight (method lora"))
    if not options["gradient_checkpointing"]:
        checkpointed = peak(gradient_checkpointing=True)
        fixes.append((checkpointed, "gradient checkpointing (train.gradient_checkpointing: true"))
    if options["batch_size"] > 1:
        half = options["batch_size"] // 2
        fixes.append((peak(batch_size=half), f"batch_size {half} (with grad_accum 2 for the same step"))
    eval_batch = options["eval_batch_size"] or options["batch_size"]
    if eval_batch > 8 and estimate.evaluation > estimate.activations:
        fixes.append((peak(eval_batch_size=8), "a smaller evaluation batch (train.eval_batch_size 8"))
    if options["dtype"] == "float32":
        fixes.append((peak(dtype="bfloat16"), "the model in bfloat16 (dtype: bfloat16"))
    texts = [f"{text}: about {size / GB:.2f} GB)" for size, text in sorted(fixes, key=lambda f: f[0])]
    return [*texts, "or a machine (or GPU) with more memory"]
