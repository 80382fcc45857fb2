"""Load a Hugging Face causal LM (a local folder, a `.gguf` file, or a hub id) as the learner's `CausalLM`.

Every check that can be made from the config and the tokenizer runs before the weights are read, so a wrong
path, an encoder model, a missing tokenizer or a tokenizer that does not fit the model fails in a second
with a message that names the fix, not after a minute of loading.

    >>> lm = load_causal_lm("path/to/folder")            # config.json, *.safetensors, tokenizer files
    >>> lm = load_causal_lm("model.Q4_1.gguf")           # dequantized to a trainable float model
    >>> lm(torch.tensor([lm.tokenizer.encode("Hello")])).shape   # [1, T, vocab]

Weights are read from safetensors (or GGUF) only: `pytorch_model.bin` files are pickles, which `lifelong`
never loads, and no code shipped inside a model folder is run (`trust_remote_code` stays off).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lifelong.errors import ConfigError, DataError
from lifelong.lm.causal_lm import CausalLM

__all__ = [
    "DTYPES",
    "ModelSource",
    "causal_lm_config",
    "check_block_size",
    "check_vocab",
    "load_causal_lm",
    "resolve_source",
    "torch_dtype",
]

#: dtypes a model can be trained in here (float16 training needs loss scaling, which the loop does not do)
DTYPES = ("float32", "bfloat16")

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "spiece.model", "vocab.txt")
# a hub id is "name" or "owner/name": letters, digits, '-', '_', '.'; no leading '.', '/' or '~'
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


@dataclass(frozen=True)
class ModelSource:
    """Where a model comes from: a local `folder` (with `gguf_file`, a `.gguf` file's name in it), or a
    hub id (`hub`) that transformers resolves itself (its cache, or the network on a connected machine)."""

    folder: Path | None = None
    gguf_file: str | None = None
    hub: str | None = None

    @property
    def location(self) -> str:
        """What transformers' `from_pretrained` takes as its first argument."""
        return str(self.folder) if self.folder is not None else str(self.hub)

    @property
    def kwargs(self) -> dict[str, Any]:
        return {"gguf_file": self.gguf_file} if self.gguf_file else {}

    def __str__(self) -> str:
        if self.gguf_file and self.folder is not None:
            return str(self.folder / self.gguf_file)
        return self.location


def torch_dtype(dtype: str) -> torch.dtype:
    """`"float32"` / `"bfloat16"` as a torch dtype; anything else is refused with the choices."""
    if dtype not in DTYPES:
        raise ConfigError(
            f"dtype {dtype!r} is not supported for training; use one of {', '.join(DTYPES)} "
            "(bfloat16 halves the memory of the weights; float16 would need loss scaling)"
        )
    return getattr(torch, dtype)


def resolve_source(path: str | os.PathLike[str]) -> ModelSource:
    """Where `path` points: a model folder, a `.gguf` file, or (when nothing exists at `path` locally and it
    looks like `owner/name`) a Hugging Face Hub id. Raises ConfigError for anything else; reads no weights."""
    text = os.fspath(path)
    local = Path(text).expanduser()
    if local.is_file():
        if local.suffix.lower() != ".gguf":
            raise ConfigError(
                f"{local} is a file; give the folder that holds the model (config.json, *.safetensors and "
                "the tokenizer files), or a .gguf file"
            )
        return ModelSource(folder=local.resolve().parent, gguf_file=local.name)
    if local.is_dir():
        if (local / "config.json").is_file():
            return ModelSource(folder=local.resolve())
        ggufs = sorted(p.name for p in local.glob("*.gguf"))
        hint = (
            f"it holds GGUF files ({', '.join(ggufs[:5])}): give the path of one of them"
            if ggufs
            else "save a model into it with model.save_pretrained(folder) and "
            "tokenizer.save_pretrained(folder)"
        )
        raise ConfigError(f"{local} is not a Hugging Face model folder (no config.json); {hint}")
    if text.lower().endswith(".gguf") or not _HUB_ID.match(text):
        raise ConfigError(
            f"{text} does not exist; point the model path at a folder saved with save_pretrained "
            "(config.json, *.safetensors, tokenizer files) or at a .gguf file"
        )
    return ModelSource(hub=text)


def _offline() -> bool:
    flags = (os.environ.get(v, "").lower() for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    return any(f not in ("", "0", "false", "no") for f in flags)


def _hub_error(source: ModelSource, err: Exception) -> ConfigError:
    why = "this machine is offline (HF_HUB_OFFLINE)" if _offline() else str(err).splitlines()[0][:300]
    return ConfigError(
        f"{source.hub!r} is neither a folder on this machine nor a model that can be loaded from the Hugging "
        f"Face Hub ({why}). Point the model path at a local folder (config.json, *.safetensors and the "
        "tokenizer files, as save_pretrained writes them) or a .gguf file; to get one, on a connected "
        f"machine run `hf download {source.hub} --local-dir DIR` and copy DIR here"
    )


def _is_encoder(config: Any) -> bool:
    """A BERT-style encoder config (bidirectional attention). transformers 5 defines `is_decoder` only on the
    configs of encoder families; transformers 4 gave every config `is_decoder=False`, so there the check is
    left to the architectures list."""
    from transformers import PretrainedConfig

    if getattr(config, "is_encoder_decoder", False):
        return False
    generic = getattr(PretrainedConfig(), "is_decoder", None)
    return generic is None and getattr(config, "is_decoder", None) is False


def _check_causal(config: Any, where: str) -> None:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    causal = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    architectures = list(getattr(config, "architectures", None) or [])
    named = ", ".join(architectures) or f"model_type {config.model_type!r}"
    fix = (
        "lifelong trains causal (next-token) language models, loaded with transformers' "
        "AutoModelForCausalLM; choose a decoder model (Llama, GPT-2, Qwen, SmolLM2, ...)"
    )
    if config.model_type not in causal:
        raise ConfigError(f"{where} holds a {named}, which is not a causal language model; {fix}")

    def is_lm(name: str) -> bool:
        return name in causal.values() or name.endswith(("ForCausalLM", "LMHeadModel"))

    if architectures and not any(is_lm(a) for a in architectures):
        raise ConfigError(
            f"{where} holds a {named} (an encoder or task model, not a causal language model); {fix}"
        )
    if _is_encoder(config):
        raise ConfigError(
            f"{where} holds a {named} configured as an encoder (is_decoder: false, bidirectional attention), "
            f"not a causal language model; {fix}"
        )


def causal_lm_config(path: str | os.PathLike[str] | ModelSource) -> Any:
    """The transformers config of the causal LM at `path`, checked (exists, is a causal LM, runs no custom
    code) without reading any weights."""
    from transformers import AutoConfig

    source = path if isinstance(path, ModelSource) else resolve_source(path)
    try:
        config = AutoConfig.from_pretrained(source.location, trust_remote_code=False, **source.kwargs)
    except (OSError, ValueError, KeyError) as err:
        if source.hub is not None:
            raise _hub_error(source, err) from None
        text = str(err).splitlines()[0][:400]
        if "trust_remote_code" in str(err) or "auto_map" in str(err):
            raise ConfigError(
                f"{source} needs custom code from its folder to build (auto_map); lifelong does not run code "
                "shipped with a model: use an architecture transformers knows"
            ) from None
        raise ConfigError(f"{source}: cannot read the model config ({text})") from None
    _check_causal(config, str(source))
    return config


def _check_weights(folder: Path) -> None:
    """The folder has safetensors weights; pickled ones (`*.bin`, `*.pt`) are refused with the fix."""
    if any(folder.glob("*.safetensors")):
        return
    pickled = sorted(p.name for p in (*folder.glob("*.bin"), *folder.glob("*.pt"), *folder.glob("*.pth")))
    if pickled:
        raise ConfigError(
            f"{folder} holds its weights as pickle files ({', '.join(pickled[:3])}), which lifelong never "
            "loads (unpickling can run code). Convert them once where you trust the files: "
            "AutoModelForCausalLM.from_pretrained(folder).save_pretrained(folder) writes model.safetensors"
        )
    raise ConfigError(
        f"{folder} has a config.json but no weights (*.safetensors); save the model there with "
        "model.save_pretrained(folder)"
    )


def _has_tokenizer(folder: Path) -> bool:
    return any((folder / name).is_file() for name in _TOKENIZER_FILES)


def _load_tokenizer(source: ModelSource, tokenizer: str | os.PathLike[str] | None) -> Any:
    from transformers import AutoTokenizer

    if tokenizer is None:
        tok_source = source
    elif Path(tokenizer).expanduser().is_dir():  # a tokenizer folder needs no config.json
        tok_source = ModelSource(folder=Path(tokenizer).expanduser().resolve())
    else:
        tok_source = resolve_source(tokenizer)  # a .gguf file or a hub id
    folder = tok_source.folder
    if folder is not None and not tok_source.gguf_file and not _has_tokenizer(folder):
        fix = (
            "save the model's tokenizer there with tokenizer.save_pretrained(folder), or name a folder that "
            "has it: tokenizer=<folder>"
            if tokenizer is None
            else "save one there with tokenizer.save_pretrained(folder)"
        )
        raise ConfigError(f"{folder} holds no tokenizer (none of {', '.join(_TOKENIZER_FILES)}); {fix}")
    try:
        return AutoTokenizer.from_pretrained(
            tok_source.location, trust_remote_code=False, **tok_source.kwargs
        )
    except (OSError, ValueError, KeyError) as err:
        if tok_source.hub is not None:
            raise _hub_error(tok_source, err) from None
        raise ConfigError(
            f"cannot load the tokenizer of {tok_source} ({str(err).splitlines()[0][:300]}); pass "
            "tokenizer=<folder> with the model's tokenizer"
        ) from None


def _tokenizer_size(tokenizer: Any) -> int:
    """One more than the largest id the tokenizer can produce (added tokens included)."""
    size = 0
    if hasattr(tokenizer, "__len__"):
        size = int(len(tokenizer))
    elif hasattr(tokenizer, "vocab_size"):
        size = int(tokenizer.vocab_size)
    get_vocab = getattr(tokenizer, "get_vocab", None)
    if callable(get_vocab):
        ids = get_vocab().values()
        if ids:
            size = max(size, max(int(i) for i in ids) + 1)
    if not size:
        raise DataError(
            f"tokenizer {type(tokenizer).__name__} tells no vocabulary size (no __len__ or get_vocab)"
        )
    return size


def _output_rows(model: Any) -> int:
    """Rows of the output layer of a `CausalLM`, a transformers model, or (before loading) its config."""
    if isinstance(model, CausalLM):
        return model.vocab_size
    get_output = getattr(model, "get_output_embeddings", None)
    if callable(get_output) and get_output() is not None:
        return int(get_output().weight.shape[0])
    config = getattr(model, "config", model)
    return int(config.vocab_size)


def _max_positions(model: Any) -> int | None:
    if isinstance(model, CausalLM):
        return model.max_positions
    config = getattr(model, "config", model)
    value = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    return int(value) if value is not None else None


def check_vocab(tokenizer: Any, model: Any) -> None:
    """Raise DataError when `tokenizer` can produce ids that `model` (a `CausalLM`, a transformers model, or
    its config) has no output row for: such a token would index past the embedding and crash mid-run.

        >>> check_vocab(lm.tokenizer, lm)        # the model's own tokenizer always fits
    """
    size, rows = _tokenizer_size(tokenizer), _output_rows(model)
    if size > rows:
        raise DataError(
            f"the tokenizer has {size} tokens (ids 0..{size - 1}) but the model's output layer has only "
            f"{rows} rows; use the tokenizer the model was trained with, or grow the model first: "
            f"model.resize_token_embeddings({size})"
        )


def check_block_size(block_size: int, model: Any) -> None:
    """Raise ConfigError when blocks of `block_size` tokens are longer than `model`'s position encoding covers
    (`max_position_embeddings`), or not positive.

        >>> check_block_size(256, lm)
    """
    if block_size < 1:
        raise ConfigError(f"block_size must be at least 1 token, got {block_size}")
    limit = _max_positions(model)
    if limit is not None and block_size > limit:
        raise ConfigError(
            f"block_size {block_size} is longer than the model's {limit} positions "
            f"(max_position_embeddings); set block_size to at most {limit}"
        )


def _device(device: str) -> torch.device:
    from lifelong.training import check_device

    try:
        check_device(device)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    return torch.device(device)


def load_causal_lm(
    path: str | os.PathLike[str],
    dtype: str = "float32",
    *,
    device: str = "cpu",
    tokenizer: str | os.PathLike[str] | None = None,
) -> CausalLM:
    """The causal LM at `path` with its tokenizer, as a `CausalLM` (token ids [B, T] -> logits [B, T, V]).

    `path`: a folder saved with `save_pretrained` (config.json, *.safetensors, tokenizer files), a `.gguf`
    file (dequantized into a trainable float model; loading takes longer: cache it with
    `lifelong.lm.smollm2.convert_gguf`), or a Hub id on a connected machine (or in the local Hub cache).
    `dtype`: "float32" or "bfloat16". `device`: where the weights go ("cpu", "cuda", "cuda:1", "mps").
    `tokenizer`: a folder (or .gguf file, or Hub id) to take the tokenizer from when `path` has none.

        >>> lm = load_causal_lm("models/tiny-llama", dtype="bfloat16")
        >>> lm.vocab_size, lm.max_positions
    """
    wanted = torch_dtype(dtype)
    target = _device(device)
    source = resolve_source(path)
    config = causal_lm_config(source)
    if source.folder is not None and not source.gguf_file:
        _check_weights(source.folder)
    tok = _load_tokenizer(source, tokenizer)
    check_vocab(tok, config)  # before the weights: a mismatched tokenizer fails in a second
    if source.gguf_file:
        model = load_gguf_model(source, wanted)
    else:
        from transformers import AutoModelForCausalLM

        try:
            model = AutoModelForCausalLM.from_pretrained(
                source.location, dtype=wanted, use_safetensors=True, trust_remote_code=False
            )
        except OSError as err:
            if source.hub is not None:
                raise _hub_error(source, err) from None
            why = str(err).splitlines()[0][:300]
            raise ConfigError(f"cannot load the weights of {source}: {why}") from None
    return CausalLM(model.to(target), tok)


def load_gguf_model(source: ModelSource, dtype: torch.dtype = torch.float32) -> Any:
    """The model in a GGUF file, dequantized, as an ordinary trainable transformers model.

    transformers loads GGUF weights into a float model but flags it as quantized, so `save_pretrained`
    refuses it (and peft would treat it as quantized): the weights are moved into a fresh model of the same
    class built from the config without its `quantization_config`."""
    from transformers import AutoModelForCausalLM

    if not source.gguf_file:
        raise ConfigError(f"{source} is not a .gguf file")
    try:
        # float32 here whatever `dtype`: transformers dequantizes GGUF fastest (and exactly) into float32
        loaded = AutoModelForCausalLM.from_pretrained(source.location, dtype=torch.float32, **source.kwargs)
    except (OSError, ValueError, KeyError, ImportError) as err:
        raise ConfigError(
            f"cannot load the GGUF file {source} ({str(err).splitlines()[0][:300]}); it needs the gguf "
            "package (pip install gguf) and an architecture transformers can read from GGUF"
        ) from None
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    state = loaded.state_dict()
    del loaded
    # initialising the fresh weights costs a second or two; every one of them is overwritten right after
    fresh = AutoModelForCausalLM.from_config(config, dtype=dtype)
    missing, unexpected = fresh.load_state_dict(state, strict=False)
    tied = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
    if unexpected or set(missing) - tied:
        raise ConfigError(
            f"the GGUF file {source} did not fill a {type(fresh).__name__} (missing {sorted(missing)[:5]}, "
            f"unexpected {sorted(unexpected)[:5]}); convert it with llama.cpp's tools to safetensors instead"
        )
    fresh.tie_weights()
    return fresh.eval()
