"""Crash-safe run state: atomic files, checksummed checkpoints, no pickle.

A run directory:

    config.json            the run's config (a run directory belongs to exactly one config)
    run.json               origin, initial weights' hash, the stream's fingerprint (`run_directory.py`)
    checkpoints/LATEST.json   which checkpoint is complete, and the SHA-256 of each of its files
    checkpoints/step-000123/  model.safetensors, optimizer.{safetensors,json}, method-<i>-<name>.{...},
                              rng.safetensors, progress.json
    events.jsonl           one line per training log, evaluation, experience end, checkpoint
    results.json           written once the run ends; report.html beside it

Every file is written to a temporary name, fsynced and renamed, so a reader sees the old file or the new one,
never half of one. A checkpoint becomes current only when `LATEST.json` (itself written atomically) names
it, after all its files are on disk: a run killed while checkpointing resumes from the previous one.
Tensors are stored with safetensors, everything else as JSON; nothing is ever unpickled.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from lifelong.atomic import atomic_write_bytes, atomic_write_json, fsync_dir, read_json
from lifelong.errors import StateError

CHECKPOINTS = "checkpoints"
LATEST = "LATEST.json"


# --- tensors and JSON side by side -----------------------------------------------------------------------


def split_state(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """A flat state dict -> (tensors, JSON values); tensors made contiguous and unshared for safetensors."""
    tensors, meta = {}, {}
    for key, value in state.items():
        if isinstance(value, torch.Tensor):
            tensors[key] = value.detach().cpu().contiguous().clone()
        else:
            meta[key] = value
    return tensors, meta


_JSON_SCALARS = (str, int, float, bool, type(None))


def check_method_state(method: str, state: Any) -> None:
    """Raise StateError unless `state` (method `method`'s state_dict) is a dict whose values are tensors or
    JSON values, so a checkpoint can hold it and give it back unchanged. Run before a checkpoint writes
    anything: a value json.dumps cannot write would otherwise fail halfway through."""
    if not isinstance(state, dict):
        raise StateError(
            f"method {method!r}: state_dict() returned a {type(state).__name__}; return a dict of tensors "
            "and JSON values"
        )
    for key, value in state.items():
        if not isinstance(key, str):
            _bad_state(method, repr(key), key, "a key")
        if not isinstance(value, torch.Tensor):
            _check_json(method, key, value)


def _check_json(method: str, where: str, value: Any) -> None:
    if isinstance(value, _JSON_SCALARS):
        return
    if isinstance(value, list | tuple):
        for i, item in enumerate(value):
            _check_json(method, f"{where}[{i}]", item)
    elif isinstance(value, dict):
        for k, item in value.items():
            if not isinstance(k, str):  # JSON would turn it into a string: resumed, the key would differ
                _bad_state(method, where, k, "a dict key")
            _check_json(method, f"{where}.{k}", item)
    else:
        _bad_state(method, where, value, "a value")


def _bad_state(method: str, where: str, value: Any, what: str) -> None:
    kind = type(value).__name__
    if isinstance(value, torch.Tensor):
        fix = "put each tensor under a top-level key of its own (nested values must be JSON)"
    else:
        fix = (
            "convert numpy arrays with torch.from_numpy (numpy numbers with .item()); store other values "
            "as JSON (None, bool, int, float, str, lists, dicts with string keys)"
        )
    raise StateError(
        f"method {method!r}: state_dict() has {what} of type {kind} at key {where!r}; a checkpoint holds "
        f"tensors and JSON values only: {fix}"
    )


def _tied_names(model: nn.Module) -> set[str]:
    """State-dict entries that share storage with an earlier entry (tied weights, e.g. a GPT head)."""
    tied, seen = set(), set()
    for name, tensor in model.state_dict().items():
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
        if key in seen:
            tied.add(name)
        seen.add(key)
    return tied


def _model_tensors(model: nn.Module, only: set[str] | None = None) -> dict[str, torch.Tensor]:
    tied = _tied_names(model)  # stored once: safetensors refuses shared storage
    return {
        name: t.detach().cpu().contiguous().clone()
        for name, t in model.state_dict().items()
        if name not in tied and (only is None or name in only)
    }


def changing_names(model: nn.Module, methods: list[Any]) -> set[str] | None:
    """The state-dict keys a checkpoint must store, when a method keeps the rest of the model fixed for the
    whole run (LoRA with `merge: false`: adapters on a frozen base), else None (store everything). The fixed
    part is then recorded by its SHA-256 only: a 135M-parameter base is not written at every checkpoint, and
    a restore checks that the model it goes into has exactly that base."""
    for method in methods:
        if getattr(method, "frozen_base", False):
            return set(method.changing_names(model))
    return None


def _base_digest(model: nn.Module, changing: set[str]) -> dict[str, Any]:
    """SHA-256 of the model's fixed tensors (those not in `changing`), and their names."""
    fixed = {n: t for n, t in _model_tensors(model).items() if n not in changing}
    h = hashlib.sha256()
    for name, tensor in fixed.items():
        h.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        h.update(tensor.view(torch.uint8).numpy().data if tensor.numel() else b"")
    return {"sha256": h.hexdigest(), "names": sorted(fixed)}


def _optimizer_state(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    meta: dict[str, Any] = {"param_groups": sd["param_groups"], "state": {}}
    for pid, entry in sd["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{pid}.{key}"] = value.detach().cpu().contiguous().clone()
            else:
                meta["state"].setdefault(str(pid), {})[key] = value
    return tensors, meta


def _load_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    state: dict[int, dict[str, Any]] = {int(pid): dict(v) for pid, v in meta["state"].items()}
    for key, value in tensors.items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


# --- checkpoints -------------------------------------------------------------------------------------------


def save_checkpoint(
    run_dir: str | Path,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    methods: list[Any],
    progress: dict[str, Any],
    rng: dict[str, torch.Tensor],
    name: str,
) -> Path:
    """Write a complete checkpoint named `name`, then make it the current one."""
    states = [method.state_dict() for method in methods]
    for method, state in zip(methods, states, strict=True):  # before anything is written
        check_method_state(method.name, state)
    root = Path(run_dir) / CHECKPOINTS
    final = root / name
    tmp = root / f".{name}.tmp"
    for leftover in (tmp, final):  # from an attempt that was killed before LATEST named it
        if leftover.exists():
            shutil.rmtree(leftover)
    tmp.mkdir(parents=True)
    files: dict[str, str] = {}

    def put(fname: str, data: bytes) -> None:
        files[fname] = atomic_write_bytes(tmp / fname, data)

    changing = changing_names(model, methods)
    put("model.safetensors", st_save(_model_tensors(model, changing)))
    if changing is not None:
        put("base.json", _json_bytes(_base_digest(model, changing)))
    if optimizer is not None:
        tensors, meta = _optimizer_state(optimizer)
        put("optimizer.safetensors", st_save(tensors))
        put("optimizer.json", _json_bytes(meta))
    for i, (method, state) in enumerate(zip(methods, states, strict=True)):
        tensors, meta = split_state(state)
        put(f"method-{i}-{method.name}.safetensors", st_save(tensors))
        put(f"method-{i}-{method.name}.json", _json_bytes(meta))
    put("rng.safetensors", st_save({k: v.contiguous() for k, v in rng.items()}))
    put("progress.json", _json_bytes(progress))
    os.replace(tmp, final)
    fsync_dir(root)
    atomic_write_json(root / LATEST, {"checkpoint": name, "files": files})
    remove_stale_checkpoints(run_dir, keep=name)
    return final


def remove_stale_checkpoints(run_dir: str | Path, keep: str) -> None:
    """Remove every checkpoint but `keep`, and what a killed save left behind: older checkpoints it had no
    time to remove, `.<name>.tmp` folders, half-written `.LATEST.json.*.tmp` files."""
    for entry in (Path(run_dir) / CHECKPOINTS).iterdir():
        if entry.name in (LATEST, keep):
            continue
        if entry.is_dir():
            shutil.rmtree(entry)
        elif entry.name.startswith(".") and entry.name.endswith(".tmp"):
            entry.unlink()


def _json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, sort_keys=True) + "\n").encode()


def _valid_index(index: Any) -> bool:
    """LATEST.json's shape: a plain checkpoint name, and plain file names (the required ones among them)
    with their SHA-256 digests."""

    def plain(name: Any) -> bool:
        return isinstance(name, str) and name not in ("", ".", "..") and Path(name).name == name

    if not isinstance(index, dict) or not plain(index.get("checkpoint")):
        return False
    files = index.get("files")
    return (
        isinstance(files, dict)
        and all(plain(f) and isinstance(digest, str) for f, digest in files.items())
        and {"model.safetensors", "rng.safetensors", "progress.json"} <= set(files)
    )


def has_checkpoint(run_dir: str | Path) -> bool:
    return (Path(run_dir) / CHECKPOINTS / LATEST).exists()


def read_checkpoint(run_dir: str | Path) -> dict[str, Any]:
    """Read and verify the current checkpoint: every file must match its recorded SHA-256.

    Returns {"model": tensors, "optimizer": (tensors, meta) | None, "methods": [state, ...],
    "rng": tensors, "progress": dict, "path": Path}.
    """
    root = Path(run_dir) / CHECKPOINTS
    index = read_json(root / LATEST, "checkpoint index")
    if not _valid_index(index):
        raise StateError(
            f"checkpoint index {root / LATEST} is damaged (not a checkpoint name and the SHA-256 of its "
            "files); restore it from a backup"
        )
    ckpt = root / index["checkpoint"]
    blobs: dict[str, bytes] = {}
    for fname, digest in index["files"].items():
        path = ckpt / fname
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise StateError(f"checkpoint file {path} is missing; the run directory was modified") from None
        if hashlib.sha256(data).hexdigest() != digest:
            raise StateError(
                f"checkpoint file {path} is damaged (SHA-256 mismatch: truncated or modified). "
                "Restore the run directory from a backup, or start a new run in another directory."
            )
        blobs[fname] = data
    out: dict[str, Any] = {"path": ckpt, "model": st_load(blobs["model.safetensors"])}
    out["base"] = json.loads(blobs["base.json"]) if "base.json" in blobs else None
    out["optimizer"] = (
        (st_load(blobs["optimizer.safetensors"]), json.loads(blobs["optimizer.json"]))
        if "optimizer.json" in blobs
        else None
    )
    methods = []
    i = 0
    while True:
        names = [f for f in blobs if f.startswith(f"method-{i}-") and f.endswith(".json")]
        if not names:
            break
        stem = names[0][: -len(".json")]
        state = dict(json.loads(blobs[f"{stem}.json"]))
        state.update(st_load(blobs[f"{stem}.safetensors"]))
        methods.append((stem.split("-", 2)[2], state))
        i += 1
    out["methods"] = methods
    out["rng"] = st_load(blobs["rng.safetensors"])
    out["progress"] = json.loads(blobs["progress.json"])
    return out


def restore(
    checkpoint: dict[str, Any],
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    methods: list[Any],
) -> None:
    """Load a checkpoint read by `read_checkpoint` into live objects."""
    saved = checkpoint["model"]
    try:
        missing, unexpected = model.load_state_dict(saved, strict=False)
    except RuntimeError as err:  # same names, other shapes
        raise StateError(
            f"checkpoint model does not fit this model ({err}); the run directory belongs to another model"
        ) from None
    tied = _tied_names(model)
    base = checkpoint.get("base")
    if base is not None:  # the checkpoint holds what changed; the rest must be the run's own base
        if set(missing) - tied - set(base["names"]) or unexpected:
            raise StateError(
                f"checkpoint model does not fit this model (missing {sorted(set(missing) - tied)}, "
                f"unexpected {sorted(unexpected)}); the run directory belongs to another model"
            )
        if _base_digest(model, set(saved))["sha256"] != base["sha256"]:
            raise StateError(
                "the checkpoint stores only the adapters (and what else trained); the base weights of the "
                "model given differ from the ones the run was trained on (SHA-256 mismatch). Load the "
                "same pretrained model (same folder, same dtype) the run started from"
            )
        missing = [m for m in missing if m not in base["names"]]
    if unexpected or set(missing) - tied:
        raise StateError(
            f"checkpoint model does not fit this model (missing {sorted(set(missing) - tied)}, "
            f"unexpected {sorted(unexpected)}); the run directory belongs to another model"
        )
    if optimizer is not None and checkpoint["optimizer"] is not None:
        _load_optimizer(optimizer, *checkpoint["optimizer"])
    names = [name for name, _ in checkpoint["methods"]]
    if names != [m.name for m in methods]:
        raise StateError(f"checkpoint has methods {names} but this run has {[m.name for m in methods]}")
    for method, (_, state) in zip(methods, checkpoint["methods"], strict=True):
        method.load_state_dict(state)


def weights_digest(model: nn.Module) -> str:
    """SHA-256 of a model's weights (names, dtypes, shapes and values): tells two initialisations apart."""
    h = hashlib.sha256()
    for name, tensor in _model_tensors(model).items():
        h.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        h.update(tensor.view(torch.uint8).numpy().data if tensor.numel() else b"")
    return h.hexdigest()


def rewrite_checkpoint(run_dir: str | Path, *, model: nn.Module, methods: list[Any]) -> None:
    """Replace the model's and the methods' files of the current checkpoint with the live objects' state,
    keeping the optimizer, RNG and position (used when data is deleted from a trained model: the unlearned
    weights and the purged memories). The checkpoint is written whole under a new name and then made
    current, as `save_checkpoint` does, so a crash leaves the old one."""
    read_checkpoint(run_dir)  # verified before it is edited
    root = Path(run_dir) / CHECKPOINTS
    index = read_json(root / LATEST, "checkpoint index")
    old = root / index["checkpoint"]
    name = f"{index['checkpoint']}-edited"
    tmp = root / f".{name}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    shutil.copytree(old, tmp, copy_function=shutil.copyfile)
    files = dict(index["files"])
    changing = changing_names(model, methods)
    weights = st_save(_model_tensors(model, changing))
    files["model.safetensors"] = atomic_write_bytes(tmp / "model.safetensors", weights)
    for i, method in enumerate(methods):
        state = method.state_dict()
        check_method_state(method.name, state)
        tensors, meta = split_state(state)
        files[f"method-{i}-{method.name}.safetensors"] = atomic_write_bytes(
            tmp / f"method-{i}-{method.name}.safetensors", st_save(tensors)
        )
        files[f"method-{i}-{method.name}.json"] = atomic_write_bytes(
            tmp / f"method-{i}-{method.name}.json", _json_bytes(meta)
        )
    final = root / name
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    fsync_dir(root)
    atomic_write_json(root / LATEST, {"checkpoint": name, "files": files})
    remove_stale_checkpoints(run_dir, keep=name)
