"""LoRA per experience: train low-rank adapters on frozen weights, merge them at each new experience.

Hu, Shen, Wallis, Allen-Zhu, Li, Wang, Wang and Chen, 2022, "LoRA: Low-Rank Adaptation of Large Language
Models" (ICLR 2022).

Each adapted linear layer computes W x + (α/r)·B A x, where W (and its bias) is frozen, A (r x in) starts
random and B (out x r) starts at zero, so training starts from the unchanged model. Only A, B (and the
model's `head`, with `train_head`) train. When a new experience starts, the adapter learnt on the previous
one is merged into W (W += (α/r)·B A) and a fresh adapter is started, so each experience can move every
adapted weight matrix by at most a rank-r update: a structural limit on how far the model drifts. With
`merge=False` one adapter trains across all experiences instead and the base weights never change (the
usual peft set-up): the run's model is the original one plus the adapters (and the head, with
`train_head`), which `frozen_base` and `changing_names` tell the code that stores it.

Why these choices: adapters are wrappers around the original `nn.Linear` modules, created once in `setup`
(before the optimizer exists and before a checkpoint is restored), so the model's state-dict keys are the
same for the whole run and a checkpoint restores into them. The merge and reset happen in place, on the
same Parameter objects, so an optimizer built over them stays valid; the fresh A of experience i is drawn
from a generator seeded by (seed, i), so a resumed run draws the same values without storing any RNG state.
Hugging Face models (found by duck typing, without importing transformers) get their adapters from `peft`
(`inject_adapter_in_model`), and the same merge-and-reset through peft's `get_delta_weight`. Their default
targets: for a Llama-like model (q/k/v/o projections) every attention and MLP projection, the set the QLoRA
paper (Dettmers et al., 2023) found needed to match full fine-tuning, and never the output layer; for other
architectures peft's defaults (GPT-2: `c_attn`). A target that matches no module is refused with the
model's linear layer names (short: `q_proj`, not `model.layers.0.self_attn.q_proj`).

    >>> lora = LoRA(rank=8, targets=["q_proj", "v_proj"], train_head=False, merge=False)
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from lifelong.errors import ConfigError
from lifelong.methods.base import Context, Method


def _generator(seed: int, experience: int) -> torch.Generator:
    """A CPU generator for (seed, experience) that does not depend on the global RNG's history."""
    h = 1469598103934665603
    for v in (seed, experience, 0x10FA):
        h = ((h ^ (v & 0xFFFFFFFF)) * 1099511628211) % (1 << 63)
    return torch.Generator().manual_seed(h)


def _kaiming_(param: torch.Tensor, gen: torch.Generator) -> None:
    """nn.Linear's (and peft's) init of A, drawn on the CPU from `gen`: the same values on every device."""
    values = torch.empty(param.shape, dtype=param.dtype)
    nn.init.kaiming_uniform_(values, a=math.sqrt(5), generator=gen)
    param.copy_(values)


class LoRALinear(nn.Module):
    """`base(x) + scaling * x Aᵀ Bᵀ` around a frozen `nn.Linear` `base`; A is [rank, in], B is [out, rank]."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float) -> None:
        super().__init__()
        self.base = base
        self.rank, self.scaling = rank, alpha / rank
        w = base.weight
        self.lora_A = nn.Parameter(torch.zeros(rank, base.in_features, dtype=w.dtype, device=w.device))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, dtype=w.dtype, device=w.device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + F.linear(F.linear(x, self.lora_A), self.lora_B) * self.scaling

    def delta(self) -> torch.Tensor:
        """The weight update the adapter stands for: scaling * B A (rank <= `rank`)."""
        return (self.lora_B @ self.lora_A) * self.scaling

    @torch.no_grad()
    def merge_and_reset(self, gen: torch.Generator) -> None:
        self.base.weight.add_(self.delta())
        _kaiming_(self.lora_A, gen)
        self.lora_B.zero_()


def hugging_face_model(model: nn.Module) -> nn.Module | None:
    """The first module of `model` (itself included) that is a transformers `PreTrainedModel`, found by class
    name so that transformers is never imported for the models of this package."""
    for m in model.modules():
        if any(c.__name__ == "PreTrainedModel" for c in type(m).__mro__):
            return m
    return None


# the attention and MLP projections of Llama and the architectures that copy its names (Mistral, Qwen2,
# Gemma, ...): LoRA's default targets on them
_LLAMA_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _is_linear(module: nn.Module) -> bool:
    """An `nn.Linear`, or transformers' `Conv1D` (GPT-2's linear layer, weights stored transposed)."""
    return isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"


def linear_names(model: nn.Module) -> list[str]:
    """The short names (last part of the qualified name) of `model`'s linear layers, each once, in model
    order: what a LoRA `targets` entry may name.

        >>> linear_names(nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1)))
        ['0', '2']
    """
    return list(dict.fromkeys(n.rpartition(".")[2] for n, m in model.named_modules() if n and _is_linear(m)))


class LoRA(Method):
    """Options: `rank` (r, the rank of each adapter), `alpha` (the update is scaled by alpha / rank),
    `targets` (names of the layers to adapt; a name matches a module whose qualified name is it or ends
    with `.name`; default: every `nn.Linear` except the model's `head`, or peft's defaults for the
    architecture of a Hugging Face model: every attention and MLP projection of a Llama-like one),
    `train_head` (the head trains in full beside the adapters; False: frozen too), `merge` (True: merge the
    adapter into the weights when an experience begins and start a fresh one; False: one adapter trains
    through the whole stream and the base weights never change), `seed` (the adapters' initial values)."""

    name = "lora"
    selects_trainable = True

    def __init__(
        self,
        rank: int = 8,
        alpha: float = 16.0,
        targets: list[str] | None = None,
        train_head: bool = True,
        seed: int = 0,
        merge: bool = True,
    ) -> None:
        if rank < 1:
            raise ConfigError(f"lora rank must be at least 1, got {rank}")
        if not alpha > 0:
            raise ConfigError(f"lora alpha must be > 0, got {alpha}")
        if targets is not None and not targets:
            raise ConfigError("lora targets is an empty list; name at least one layer, or leave it unset")
        if targets and train_head and "head" in targets:
            raise ConfigError(
                "lora targets include 'head' while train_head is true: the head would be both adapted and "
                "trained in full; set train_head: false to adapt it, or remove 'head' from targets"
            )
        self.rank, self.alpha, self.seed = rank, float(alpha), seed
        self.targets = list(targets) if targets is not None else None
        self.train_head, self.merge = train_head, bool(merge)

    def params(self) -> dict[str, Any]:
        # `merge` only when off: the recorded config of a run with the default stays as it was
        return {
            "rank": self.rank,
            "alpha": self.alpha,
            "targets": self.targets,
            "train_head": self.train_head,
            **({} if self.merge else {"merge": False}),
        }

    @property
    def frozen_base(self) -> bool:
        """True when the run never changes the model's weights outside `changing_names(model)` (`merge`
        False): a checkpoint or an export may store those tensors alone, beside the original model."""
        return not self.merge

    def changing_names(self, model: nn.Module) -> list[str]:
        """State-dict keys of the tensors this method lets change during a run (after `setup`): the adapters,
        the output layer with `train_head` (and every key tied to it), and the buffers (batch-norm running
        statistics move in training mode). With `merge` True the adapted weights change too, at every
        experience's start: every key. Other methods of the run may change what they train themselves
        (all of them train only weights that require gradients, i.e. these)."""
        state = model.state_dict(keep_vars=True)
        if self.merge:
            return list(state)
        changing = {id(p) for p in model.parameters() if p.requires_grad}
        changing |= {id(b) for b in model.buffers()}
        return [name for name, t in state.items() if id(t) in changing]

    # --- setup: insert the adapters, freeze the rest ------------------------------------------------------

    def setup(self, model: nn.Module) -> None:
        hf = hugging_face_model(model)
        if hf is not None:
            self._setup_peft(model, hf)
        else:
            self._setup_native(model)

    def _setup_native(self, model: nn.Module) -> None:
        if not any(isinstance(m, LoRALinear) for m in model.modules()):  # idempotent: adapters already in
            for name in self._target_names(model):
                parent_name, _, attr = name.rpartition(".")
                parent = model.get_submodule(parent_name)
                setattr(parent, attr, LoRALinear(getattr(parent, attr), self.rank, self.alpha))
            gen = _generator(self.seed, 0)
            with torch.no_grad():
                for layer in self._native_adapters(model):
                    _kaiming_(layer.lora_A, gen)
        model.requires_grad_(False)
        for layer in self._native_adapters(model):
            layer.lora_A.requires_grad_(True)
            layer.lora_B.requires_grad_(True)
        head = getattr(model, "head", None)
        if self.train_head and isinstance(head, nn.Module):
            head.requires_grad_(True)  # a head tied to an embedding (TinyGPT) trains that embedding too

    def _target_names(self, model: nn.Module) -> list[str]:
        head = getattr(model, "head", None)
        linears = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear) and n}
        if self.targets is None:
            names = [n for n, m in linears.items() if m is not head]
            if not names:
                raise ConfigError(
                    f"lora found no nn.Linear layer to adapt in {type(model).__name__} besides its head; "
                    "name the layers in `targets` (e.g. targets: [head] with train_head: false), or use "
                    "another method"
                )
            return names
        modules = dict(model.named_modules())
        chosen: list[str] = []
        for target in self.targets:
            hits = [n for n in modules if n and (n == target or n.endswith("." + target))]
            if not hits:
                raise ConfigError(
                    f"lora target {target!r} names no module of {type(model).__name__}; its linear layers "
                    f"are: {', '.join(linears) or 'none'}"
                )
            for n in hits:
                if not isinstance(modules[n], nn.Linear):
                    raise ConfigError(
                        f"lora target {target!r} matches {n!r}, a {type(modules[n]).__name__}; LoRA adapts "
                        f"nn.Linear layers: {', '.join(linears) or 'none'}"
                    )
                if n not in chosen:
                    chosen.append(n)
        return chosen

    @staticmethod
    def _native_adapters(model: nn.Module) -> list[LoRALinear]:
        return [m for m in model.modules() if isinstance(m, LoRALinear)]

    def _setup_peft(self, model: nn.Module, hf: nn.Module) -> None:
        try:
            from peft import LoraConfig, inject_adapter_in_model
        except ImportError:
            raise ConfigError(
                "lora on a Hugging Face model needs the peft package: pip install 'lifelong[hf]'"
            ) from None
        output_layer = getattr(hf, "get_output_embeddings", None)
        head = output_layer() if callable(output_layer) else None
        if not self._peft_layers(hf):  # idempotent: adapters already in
            targets = self._peft_targets(hf, head)
            # peft annotates lora_alpha as int, but only ever divides it by r: a float scales the same
            alpha = cast(int, self.alpha)
            config = LoraConfig(r=self.rank, lora_alpha=alpha, lora_dropout=0.0, target_modules=targets)
            try:
                with warnings.catch_warnings():
                    # GPT-2's Conv1D stores weights transposed; peft detects it per layer and says so
                    warnings.filterwarnings("ignore", message="fan_in_fan_out is set to False")
                    inject_adapter_in_model(config, hf)
            except ValueError as err:
                raise ConfigError(
                    f"lora could not add adapters to {type(hf).__name__}: {err}; name the layers to adapt "
                    f"in `targets` (its linear layers: {', '.join(linear_names(hf)) or 'none'})"
                ) from None
            self._reset_peft(hf, _generator(self.seed, 0), merge=False)
        model.requires_grad_(False)
        for layer in self._peft_layers(hf):
            for name, p in layer.named_parameters():
                if not name.startswith("base_layer."):
                    p.requires_grad_(True)
        if self.train_head and isinstance(head, nn.Module):
            head.requires_grad_(True)  # GPT-2 ties it to the token embedding, which then trains too

    def _peft_targets(self, hf: nn.Module, head: nn.Module | None) -> list[str] | None:
        """The `target_modules` for peft: `targets` checked against the model's modules (before anything is
        changed), or the default (None: peft's choice for the architecture)."""
        linears = linear_names(hf)
        listing = ", ".join(linears) or "none"
        modules = dict(hf.named_modules())
        if self.targets is None:
            present = [p for p in _LLAMA_PROJECTIONS if p in linears]
            if {"q_proj", "k_proj", "v_proj", "o_proj"} <= set(present):
                return present
            return None
        for target in self.targets:
            hits = [m for n, m in modules.items() if n and (n == target or n.endswith("." + target))]
            if not hits:
                raise ConfigError(
                    f"lora target {target!r} names no module of {type(hf).__name__}; its linear layers "
                    f"are: {listing}"
                )
            if not any(_is_linear(m) or isinstance(m, nn.Embedding) for m in hits):
                raise ConfigError(
                    f"lora target {target!r} matches a {type(hits[0]).__name__}, not a linear layer; name "
                    f"linear layers of {type(hf).__name__}: {listing}"
                )
            if self.train_head and head is not None and any(m is head for m in hits):
                raise ConfigError(
                    f"lora target {target!r} is the model's output layer while train_head is true: it "
                    "would be both adapted and trained in full; set train_head: false to adapt it, or "
                    "remove it from targets"
                )
        return list(self.targets)

    @staticmethod
    def _peft_layers(module: nn.Module) -> list[Any]:
        from peft.tuners.lora import LoraLayer

        return [m for m in module.modules() if isinstance(m, LoraLayer)]

    @torch.no_grad()
    def _reset_peft(self, hf: nn.Module, gen: torch.Generator, merge: bool) -> None:
        """Merge each adapter's `get_delta_weight` into its base weight (if `merge`), then reset it as peft's
        `reset_lora_parameters` would (A: Kaiming, B: zeros; embeddings: A zeros, B normal), from `gen`."""
        for layer in self._peft_layers(hf):
            base = layer.get_base_layer()
            for adapter in list(layer.lora_A) + list(layer.lora_embedding_A):
                if merge:
                    base.weight.add_(layer.get_delta_weight(adapter).to(base.weight.dtype))
                    if layer.lora_bias.get(adapter, False):
                        base.bias.add_(layer.lora_B[adapter].bias * layer.scaling[adapter])
                if adapter in layer.lora_A:
                    _kaiming_(layer.lora_A[adapter].weight, gen)
                    layer.lora_B[adapter].weight.zero_()
                    if layer.lora_B[adapter].bias is not None:
                        layer.lora_B[adapter].bias.zero_()
                else:
                    layer.lora_embedding_A[adapter].zero_()
                    b = layer.lora_embedding_B[adapter]
                    b.copy_(torch.randn(b.shape, generator=gen, dtype=b.dtype))

    # --- per experience -------------------------------------------------------------------------------------

    def start(self, ctx: Context) -> None:
        if ctx.index == 0 or not self.merge:
            return  # the adapters start fresh from setup (and, without merging, train on)
        gen = _generator(self.seed, ctx.index)
        hf = hugging_face_model(ctx.model)
        if hf is not None:
            self._reset_peft(hf, gen, merge=True)
            return
        for layer in self._native_adapters(ctx.model):
            layer.merge_and_reset(gen)

    def adapters(self, model: nn.Module) -> Iterator[nn.Module]:
        """The adapted layers of `model` (LoRALinear wrappers, or peft LoRA layers)."""
        hf = hugging_face_model(model)
        yield from self._peft_layers(hf) if hf is not None else self._native_adapters(model)
