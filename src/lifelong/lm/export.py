"""`lifelong export RUN_DIR OUT_DIR`: a trained language model as a standard Hugging Face folder.

    >>> export_run("runs/smol-lora", "exported")                  # base/ + a peft adapter folder
    >>> AutoModelForCausalLM.from_pretrained("exported")          # the run's model (peft installed)
    >>> export_run("runs/smol-lora", "merged", merge_adapters=True)   # one plain folder

What is written, by the kind of model the run trained:
- a transformers model (`CausalLM`): its `save_pretrained` folder (config.json, model.safetensors), and the
  tokenizer;
- `TinyGPT`: converted exactly into `transformers.GPT2LMHeadModel` (same layers, exact GELU, tied head;
  GPT-2's Conv1D weights are the transposes of `nn.Linear`'s);
- LoRA adapters (peft on a transformers model, or the native adapters of TinyGPT): by default `base/`
  (the weights as they are now: earlier experiences' adapters merged, the current one stripped) and a peft
  adapter folder beside it (adapter_config.json pointing at `base/` by absolute path,
  adapter_model.safetensors), which `AutoModelForCausalLM.from_pretrained(out_dir)` and
  `peft.AutoPeftModelForCausalLM.from_pretrained(out_dir)` both load; with `merge_adapters=True` one plain
  folder with the adapters merged into the weights.
Always `lifelong_export.json`: the run, its checkpoint and step, and the library versions.

The folder is built under a temporary name beside `out_dir` and renamed into place when complete, so a
failed export leaves nothing that looks finished.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from lifelong.atomic import atomic_write_json, fsync_dir, read_json
from lifelong.errors import ConfigError, StateError
from lifelong.lm.causal_lm import CausalLM
from lifelong.lm.smollm2 import fsync_tree, remove_leftovers
from lifelong.methods.base import Method

__all__ = ["EXPORT_INFO", "byte_tokenizer", "export_run", "tinygpt_to_gpt2"]

EXPORT_INFO = "lifelong_export.json"
_ADAPTER = "default"  # the adapter name lifelong's LoRA injects


# --------------------------------------------------------------------------------------------- entry point


def export_run(
    run_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    merge_adapters: bool = False,
    *,
    model: nn.Module | None = None,
    methods: Sequence[Method] | None = None,
    tokenizer: Any = None,
) -> Path:
    """Write the final model of the run in `run_dir` to `out_dir` as a Hugging Face folder; return `out_dir`.

    `model`, `methods`: for a run started from Python, a fresh model built as for training (and its methods;
    by default they are rebuilt from the run's record), exactly as `lifelong.load(run_dir, model=...)` takes
    them; the model is loaded with the run's weights (and its adapters removed) in place. `tokenizer`: saved
    beside the model (a transformers tokenizer, or "bytes" for the byte tokens of the built-in text
    streams); by default the model's own (`CausalLM.tokenizer`), or bytes for a TinyGPT run on byte tokens.
    `out_dir` must not exist or be empty.
    """
    from lifelong.inference import load

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ConfigError(
            f"{out_dir} already exists and is not an empty folder; export into a new (or empty) folder, or "
            "remove it first"
        )
    _check_run(run_dir, model)
    if model is not None and methods is None:
        methods = _recorded_methods(run_dir)
    trained = load(run_dir, model=model, methods=methods)
    net = trained.model
    _check_exportable(net, tokenizer)  # before anything is written
    info: dict[str, Any] = {
        "run_dir": str(run_dir.resolve()),
        **_checkpoint_position(run_dir),
        "model_class": f"{type(net).__module__}.{type(net).__qualname__}",
        "versions": _versions(),
    }
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(out_dir.parent, f".{out_dir.name}.export-")  # from an export that was killed
    tmp = out_dir.parent / f".{out_dir.name}.export-{os.getpid()}"
    try:
        tmp.mkdir()
        info.update(_write_model(net, run_dir, tmp, out_dir.resolve(), merge_adapters, tokenizer))
        atomic_write_json(tmp / EXPORT_INFO, info)
        fsync_tree(tmp)
        if out_dir.exists():
            out_dir.rmdir()  # empty, checked above
        os.replace(tmp, out_dir)
        fsync_dir(out_dir.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def _check_run(run_dir: Path, model: nn.Module | None) -> None:
    from lifelong import state as st

    if not (run_dir / "config.json").is_file():
        raise StateError(f"{run_dir} is not a lifelong run directory (no config.json); give a run's folder")
    if not st.has_checkpoint(run_dir):
        raise StateError(
            f"the run in {run_dir} has no checkpoint yet (it stopped before finishing its first experience); "
            "there is no trained model to export"
        )
    info = _read(run_dir / "run.json")
    if model is None and info.get("origin") == "python":
        raise StateError(
            f"the run in {run_dir} was started from Python with a model of class "
            f"{info.get('model_class', '?')}; build a fresh one as for training and pass it: "
            "export_run(run_dir, out_dir, model=...)"
        )


def _write_model(
    net: nn.Module, run_dir: Path, tmp: Path, final: Path, merge: bool, tokenizer: Any
) -> dict[str, Any]:
    """Write the model (and tokenizer) into `tmp`; return what `lifelong_export.json` says about it."""
    from lifelong.methods.lora import LoRALinear
    from lifelong.models.gpt import TinyGPT

    hf: Any
    if isinstance(net, TinyGPT):
        native = [m for m in net.modules() if isinstance(m, LoRALinear)]
        hf = tinygpt_to_gpt2(net, merge_adapters=merge or not native)
        if tokenizer is None and _byte_tokens(run_dir, net):
            tokenizer = "bytes"
        if native and not merge:
            _inject_native_adapters(net, hf)
    else:
        hf = _transformers_model(net)
        if tokenizer is None and isinstance(net, CausalLM):
            tokenizer = net.tokenizer
    tok = byte_tokenizer() if isinstance(tokenizer, str) and tokenizer == "bytes" else tokenizer
    if tok is not None and not callable(getattr(tok, "save_pretrained", None)):
        tok = None  # e.g. lifelong's ByteTokenizer on a CausalLM: nothing a transformers folder can hold
    layers = _lora_layers(hf)
    if layers and not merge:
        _write_adapter_folder(hf, layers, tmp, final / "base", tok)
        written: dict[str, Any] = {"format": "peft-adapter", "base": "base", "adapters": "separate"}
    else:
        _unload(hf, layers, merge=True)
        hf.save_pretrained(tmp)
        written = {"format": "transformers", "adapters": "merged" if layers else None}
    if tok is not None:
        tok.save_pretrained(tmp)
    written["tokenizer"] = type(tok).__name__ if tok is not None else None
    return written


def _check_exportable(net: nn.Module, tokenizer: Any) -> None:
    from lifelong.models.gpt import TinyGPT

    if not isinstance(net, TinyGPT) and _transformers_model(net) is None:
        raise ConfigError(
            f"export writes Hugging Face folders for transformers causal LMs (CausalLM) and TinyGPT; the "
            f"run's model is a {type(net).__name__}. Its weights are in the run's checkpoint "
            "(checkpoints/*/model.safetensors)"
        )
    saveable = isinstance(tokenizer, str) and tokenizer == "bytes" or hasattr(tokenizer, "save_pretrained")
    if tokenizer is not None and not saveable:
        raise ConfigError(
            f"tokenizer {type(tokenizer).__name__} has no save_pretrained; pass a transformers tokenizer or "
            "'bytes'"
        )


def _transformers_model(net: nn.Module) -> Any:
    """The transformers model inside `net` (itself, or e.g. `CausalLM.model`), or None."""
    from transformers import PreTrainedModel

    return next((m for m in net.modules() if isinstance(m, PreTrainedModel)), None)


# --------------------------------------------------------------------------------------------- peft adapters


def _lora_layers(hf: nn.Module) -> list[tuple[str, Any]]:
    try:
        from peft.tuners.lora import LoraLayer
    except ImportError:
        return []
    return [(name, m) for name, m in hf.named_modules() if isinstance(m, LoraLayer)]


def _unload(hf: Any, layers: list[tuple[str, Any]], merge: bool) -> None:
    """Put each adapted layer's base layer back in its place (after adding the adapter into it if `merge`)."""
    for name, layer in layers:
        if merge:
            layer.merge(adapter_names=list(layer.lora_A) + list(layer.lora_embedding_A))
        parent, _, attr = name.rpartition(".")
        setattr(hf.get_submodule(parent) if parent else hf, attr, layer.get_base_layer())
    if hasattr(hf, "peft_config"):
        del hf.peft_config  # no adapter left: the folder is a plain model


def _write_adapter_folder(
    hf: Any, layers: list[tuple[str, Any]], tmp: Path, base_final: Path, tokenizer: Any
) -> None:
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    configs = getattr(hf, "peft_config", None)
    if not isinstance(configs, dict) or _ADAPTER not in configs:
        raise ConfigError(
            "the model's LoRA adapters carry no peft config (they were not added by lifelong's lora method); "
            "export them merged: merge_adapters=True"
        )
    config = copy.deepcopy(configs[_ADAPTER])
    adapters = {
        # as PeftModel.save_pretrained names them: relative to the PeftModel that wraps the base model
        f"base_model.model.{key}": value.detach().cpu().contiguous()
        for key, value in get_peft_model_state_dict(hf, adapter_name=_ADAPTER).items()
    }
    _unload(hf, layers, merge=False)
    hf.save_pretrained(tmp / "base")
    if tokenizer is not None:
        tokenizer.save_pretrained(tmp / "base")
    config.base_model_name_or_path = str(base_final)
    config.task_type = "CAUSAL_LM"
    config.inference_mode = True
    config.save_pretrained(str(tmp))
    save_file(adapters, str(tmp / "adapter_model.safetensors"), metadata={"format": "pt"})


# --------------------------------------------------------------------------------------------- TinyGPT


def _gpt2_names(i: int) -> dict[str, str]:
    """TinyGPT block `i`'s linear layers -> their GPT-2 names."""
    return {
        f"blocks.{i}.attn.qkv": f"transformer.h.{i}.attn.c_attn",
        f"blocks.{i}.attn.proj": f"transformer.h.{i}.attn.c_proj",
        f"blocks.{i}.mlp.0": f"transformer.h.{i}.mlp.c_fc",
        f"blocks.{i}.mlp.2": f"transformer.h.{i}.mlp.c_proj",
    }


def _linear(module: nn.Module) -> nn.Linear:
    """The nn.Linear itself, or the one a native LoRA wrapper adapts."""
    from lifelong.methods.lora import LoRALinear

    inner = module.base if isinstance(module, LoRALinear) else module
    if not isinstance(inner, nn.Linear):
        raise ConfigError(f"TinyGPT layer {type(inner).__name__} is not a linear layer; cannot convert it")
    return inner


def _plain_linear(module: nn.Module, merge: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(weight, bias) of an nn.Linear, or of a native LoRA wrapper with its adapter merged if `merge`."""
    from lifelong.methods.lora import LoRALinear

    linear = _linear(module)
    weight = linear.weight.detach()
    if merge and isinstance(module, LoRALinear):
        weight = (linear.weight + module.delta()).detach()
    return weight, None if linear.bias is None else linear.bias.detach()


def tinygpt_to_gpt2(model: nn.Module, merge_adapters: bool = True) -> Any:
    """A `transformers.GPT2LMHeadModel` that computes exactly what `model` (a TinyGPT) computes.

    Native LoRA adapters are merged into the weights (`merge_adapters`), or left out (the base weights only).

        >>> gpt2 = tinygpt_to_gpt2(TinyGPT(256, 32, n_layer=2, n_embd=64))
        >>> torch.allclose(gpt2(x).logits, tiny(x), atol=1e-5)
    """
    from transformers import GPT2Config, GPT2LMHeadModel

    from lifelong.methods.lora import LoRALinear
    from lifelong.models.gpt import Block, TinyGPT

    if not isinstance(model, TinyGPT):
        raise ConfigError(f"tinygpt_to_gpt2 converts a TinyGPT, not a {type(model).__name__}")
    blocks = [cast(Block, b) for b in model.blocks]
    first = blocks[0]
    if isinstance(model.head, LoRALinear) and merge_adapters:
        head_w = (model.head.base.weight + model.head.delta()).detach()  # no longer the embedding
    else:
        head_w = _linear(model.head).weight.detach()
    tied = head_w.data_ptr() == model.tok.weight.data_ptr()
    dropout = float(first.drop.p)
    config = GPT2Config(
        vocab_size=model.tok.num_embeddings,
        n_positions=model.block_size,
        n_embd=model.tok.embedding_dim,
        n_layer=len(blocks),
        n_head=first.attn.n_head,
        n_inner=_linear(first.mlp[0]).out_features,
        activation_function="gelu",  # TinyGPT uses nn.GELU(): the exact erf form, not GPT-2's tanh one
        resid_pdrop=dropout,
        attn_pdrop=dropout,
        embd_pdrop=0.0,  # TinyGPT has no dropout on the embeddings
        layer_norm_epsilon=first.ln1.eps,
        tie_word_embeddings=tied,
        bos_token_id=None,
        eos_token_id=None,
    )
    state: dict[str, torch.Tensor] = {
        "transformer.wte.weight": model.tok.weight.detach(),
        "transformer.wpe.weight": model.pos.weight.detach(),
        "transformer.ln_f.weight": model.ln_f.weight.detach(),
        "transformer.ln_f.bias": model.ln_f.bias.detach(),
    }
    if not tied:
        state["lm_head.weight"] = head_w
    modules = dict(model.named_modules())
    for i, block in enumerate(blocks):
        for ours, theirs in (("ln1", "ln_1"), ("ln2", "ln_2")):
            norm = getattr(block, ours)
            state[f"transformer.h.{i}.{theirs}.weight"] = norm.weight.detach()
            state[f"transformer.h.{i}.{theirs}.bias"] = norm.bias.detach()
        for ours, theirs in _gpt2_names(i).items():
            weight, bias = _plain_linear(modules[ours], merge_adapters)
            state[f"{theirs}.weight"] = weight.t()  # Conv1D keeps [in, out]
            if bias is not None:
                state[f"{theirs}.bias"] = bias
    gpt2: Any = GPT2LMHeadModel(config)
    gpt2.to(dtype=model.tok.weight.dtype, device=model.tok.weight.device)
    missing, unexpected = gpt2.load_state_dict({k: v.contiguous() for k, v in state.items()}, strict=False)
    allowed = {"lm_head.weight"} if tied else set()
    if unexpected or set(missing) - allowed:
        raise StateError(f"TinyGPT -> GPT-2 left weights unset: missing {missing}, unexpected {unexpected}")
    if tied:
        gpt2.tie_weights()
    return gpt2.eval()


def _inject_native_adapters(model: nn.Module, gpt2: Any) -> None:
    """Give `gpt2` (built from TinyGPT's base weights) peft adapters equal to TinyGPT's native ones."""
    from peft import LoraConfig, inject_adapter_in_model

    from lifelong.methods.lora import LoRALinear

    names: dict[str, str] = {}
    for i in range(len(gpt2.transformer.h)):
        names.update(_gpt2_names(i))
    adapters = {n: m for n, m in model.named_modules() if isinstance(m, LoRALinear)}
    if "head" in adapters:
        raise ConfigError(
            "this TinyGPT run adapted its head, which GPT-2 ties to the token embedding; export it with the "
            "adapters merged: merge_adapters=True"
        )
    first = next(iter(adapters.values()))
    config = LoraConfig(
        r=first.rank,
        lora_alpha=first.scaling * first.rank,  # type: ignore[arg-type]  # peft divides it by r: a float works
        target_modules=[names[n] for n in adapters],
        fan_in_fan_out=True,  # GPT-2's Conv1D stores [in, out]
        lora_dropout=0.0,
    )
    inject_adapter_in_model(config, gpt2)
    with torch.no_grad():
        for ours, layer in adapters.items():
            target: Any = gpt2.get_submodule(names[ours])
            target.lora_A[_ADAPTER].weight.copy_(layer.lora_A)
            target.lora_B[_ADAPTER].weight.copy_(layer.lora_B)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map of the 256 byte values to printable characters (what ByteLevel uses)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    printable += range(ord("®"), ord("ÿ") + 1)
    chars = list(printable)
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(printable, chars, strict=True)}


def byte_tokenizer() -> Any:
    """A transformers tokenizer whose ids are the UTF-8 bytes (0..255), like `ByteTokenizer`: the tokenizer
    of a model trained on the built-in text streams.

        >>> byte_tokenizer()("hé").input_ids
        [104, 195, 169]
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {char: byte for byte, char in _bytes_to_unicode().items()}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok)


def _byte_tokens(run_dir: Path, net: nn.Module) -> bool:
    """Whether the run's stream was byte tokens: its record says so, or (older records) 256 outputs."""
    info = _read(run_dir / "run.json").get("stream_info", {})
    named = info.get("tokenizer") if isinstance(info, dict) else None
    if named is not None:
        return named == "ByteTokenizer"
    return getattr(getattr(net, "tok", None), "num_embeddings", None) == 256


# --------------------------------------------------------------------------------------------- the record


def _read(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _checkpoint_position(run_dir: Path) -> dict[str, Any]:
    from lifelong import state as st

    index = read_json(run_dir / st.CHECKPOINTS / st.LATEST, "checkpoint index")
    name = index.get("checkpoint") if isinstance(index, dict) else None
    progress = _read(run_dir / st.CHECKPOINTS / str(name) / "progress.json") if name else {}
    matrix = progress.get("matrix")
    return {
        "checkpoint": name,
        "step": progress.get("step"),
        "experiences_done": len(matrix) if isinstance(matrix, list) else None,
    }


def _checkpoint_method_names(run_dir: Path) -> list[str]:
    from lifelong import state as st

    index = read_json(run_dir / st.CHECKPOINTS / st.LATEST, "checkpoint index")
    files = index.get("files", {}) if isinstance(index, dict) else {}
    names: list[str] = []
    i = 0
    while True:
        found = [f for f in files if f.startswith(f"method-{i}-") and f.endswith(".json")]
        if not found:
            return names
        names.append(found[0][len(f"method-{i}-") : -len(".json")])
        i += 1


def _recorded_methods(run_dir: Path) -> list[Method]:
    """The run's methods rebuilt from its record (config.json), for a run whose model is passed in."""
    from lifelong.schedules import HotWeights

    # the loop's own state (wsd's hot weights) is not a method of the run's record
    names = [n for n in _checkpoint_method_names(run_dir) if n != HotWeights.name]
    if not names:
        return []
    config = _read(run_dir / "config.json")
    hint = "pass them as built for training: export_run(run_dir, out_dir, model=..., methods=[...])"
    if _read(run_dir / "run.json").get("origin") == "config":
        from lifelong.config import parse_config
        from lifelong.experiment import build_methods

        try:
            return build_methods(parse_config(config))
        except (ValueError, TypeError) as err:
            raise StateError(f"cannot rebuild the methods of the run in {run_dir} ({err}); {hint}") from None
    from lifelong.methods import METHODS

    entries = config.get("method")
    entries = [e for e in entries if isinstance(e, dict)] if isinstance(entries, list) else []
    if [e.get("name") for e in entries] != names:
        raise StateError(f"the run in {run_dir} was trained with methods {names}; {hint}")
    methods = []
    for entry in entries:
        cls = METHODS.get(str(entry["name"]))
        try:
            if cls is None:
                raise TypeError(f"{entry['name']!r} is not a built-in method")
            methods.append(cls(**{k: v for k, v in entry.items() if k != "name"}))
        except (TypeError, ValueError) as err:
            raise StateError(
                f"cannot rebuild method {entry['name']!r} of the run in {run_dir} ({err}); {hint}"
            ) from None
    return methods


def _versions() -> dict[str, str | None]:
    from lifelong.version import __version__

    out: dict[str, str | None] = {"lifelong": __version__, "torch": torch.__version__}
    for dist in ("transformers", "peft", "tokenizers", "safetensors"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out
