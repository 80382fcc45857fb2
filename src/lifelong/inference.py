"""A trained run, ready to answer: `lifelong.load(RUN_DIR)` and `lifelong predict RUN_DIR INPUT --out FILE`.

    model = lifelong.load("runs/first")             # the final state of the run, in eval mode
    model.predict_labels(x)                          # label names, with the methods' own prediction rules
    model.predict_proba(x)                           # [N, classes] probabilities
    predict_file("runs/first", "new.csv", "predictions.csv")

The model is rebuilt from the run's config and `run.json` (input shape, classes, label names, feature
columns and scaling) without loading the training data, then restored from the last checkpoint, checksums
verified. Methods that decide the predictions themselves (iCaRL's nearest mean of exemplars, NCM, analytic
learning) are restored too and applied. A run started from Python is loaded by passing its model (and
methods) built as for training: `lifelong.load(RUN_DIR, model=MLP(...), methods=[...])`.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from lifelong import state as st
from lifelong.errors import DataError, StateError
from lifelong.learner import Predicting
from lifelong.methods.base import Method, overrides
from lifelong.objectives import Classification
from lifelong.run_directory import RUN_INFO
from lifelong.schedules import HotWeights
from lifelong.streams.experience import Stream
from lifelong.streams.files import _file_format
from lifelong.streams.tables import Part, _read_frame

__all__ = ["TrainedModel", "load", "predict_file", "read_inputs"]


@dataclass
class _Shape:
    """What `build_model` reads of a stream, without its data."""

    kind: str
    input_shape: tuple[int, ...]
    num_classes: int


@dataclass
class TrainedModel:
    """The final state of a run, for inference. `scores`/`predict_proba`/`predict`/`predict_labels` take
    inputs shaped like the training data (`[N, *input_shape]`, or flat `[N, features]`), as tensors or
    NumPy arrays, unscaled: the run's feature scaling (`normalize: standard`) is applied here."""

    model: nn.Module
    methods: list[Method]
    kind: str
    input_shape: tuple[int, ...]
    num_classes: int
    label_names: list[Any]
    feature_names: list[str] | None
    normalizer: dict[str, list[float]] | None
    task_classes: dict[int, list[int]] | None
    run_dir: Path

    def __post_init__(self) -> None:
        self.model.eval()
        hooks = [m.predict for m in self.methods if overrides(m, "predict")]
        self._scored: nn.Module = Predicting(self.model, hooks) if hooks else self.model
        self._objective = Classification(self.num_classes, self.task_classes)

    def prepare(self, x: Any) -> torch.Tensor:
        """Inputs as the model takes them: a float32 tensor `[N, *input_shape]`, scaled like training."""
        t = torch.from_numpy(np.asarray(x)) if not isinstance(x, torch.Tensor) else x
        if not (torch.is_floating_point(t) or t.dtype in (torch.int64, torch.int32, torch.uint8)):
            raise DataError(f"inputs have dtype {t.dtype}; give numeric features")
        t = t.to(torch.float32)
        per_sample = int(np.prod(self.input_shape))
        if t.dim() == 1 and t.numel() == per_sample:
            t = t.unsqueeze(0)
        if t.numel() % per_sample or t.shape[0] * per_sample != t.numel():
            raise DataError(
                f"inputs of shape {tuple(t.shape)} do not fit the model, which takes samples of shape "
                f"{self.input_shape} ({per_sample} values each)"
            )
        flat = t.reshape(t.shape[0], per_sample)
        if self.normalizer is not None:
            mean = torch.tensor(self.normalizer["mean"], dtype=torch.float32)
            std = torch.tensor(self.normalizer["std"], dtype=torch.float32)
            flat = (flat - mean) / std
        if not bool(torch.isfinite(flat).all()):
            raise DataError("inputs hold NaN or infinite values; clean or impute them before predicting")
        return flat.reshape(t.shape[0], *self.input_shape)

    @torch.no_grad()
    def scores(self, x: Any, task: Any = None, batch_size: int = 1000) -> torch.Tensor:
        """The scores the run's evaluation would use (logits, or a method's own scores), `[N, classes]`."""
        if self.kind != "classification":
            raise DataError("predictions are for classification runs; this run models language")
        inputs = self.prepare(x)
        tasks = None
        if self.task_classes is not None:
            if task is None:
                raise DataError("this run is task-incremental: pass the task label of each sample (task=...)")
            tasks = torch.as_tensor(task, dtype=torch.int64).expand(len(inputs))
        out = [
            self._objective.forward(
                self._scored,
                inputs[i : i + batch_size],
                None if tasks is None else tasks[i : i + batch_size],
            )
            for i in range(0, len(inputs), batch_size)
        ]
        return torch.cat(out) if out else torch.empty(0, self.num_classes)

    def predict_proba(self, x: Any, task: Any = None) -> torch.Tensor:
        """Class probabilities `[N, classes]` (softmax of `scores`)."""
        return torch.softmax(self.scores(x, task), dim=1)

    def predict(self, x: Any, task: Any = None) -> torch.Tensor:
        """Class indices `[N]`."""
        return self.scores(x, task).argmax(dim=1)

    def predict_labels(self, x: Any, task: Any = None) -> list[Any]:
        """Label names (the original labels of the training files, or class names)."""
        return [self.label_names[int(k)] for k in self.predict(x, task)]


def load(
    run_dir: str | Path, model: nn.Module | None = None, methods: Sequence[Method] | None = None
) -> TrainedModel:
    """The trained model of the run in `run_dir`, from its last checkpoint, ready for inference."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.json").is_file():
        raise StateError(f"{run_dir} is not a lifelong run directory (no config.json)")
    if not st.has_checkpoint(run_dir):
        raise StateError(
            f"the run in {run_dir} has no checkpoint yet (it stopped before finishing its first experience); "
            "nothing trained to load"
        )
    if not (run_dir / RUN_INFO).is_file():
        raise StateError(
            f"{run_dir} has no {RUN_INFO} (made by lifelong 0.1, which recorded no stream information); "
            "run it again with this version to load it"
        )
    info = st.read_json(run_dir / RUN_INFO, "run information")
    shape = info["stream_info"]
    if model is None:
        if info.get("origin") == "python":
            raise StateError(
                f"the run in {run_dir} was started from Python with a model of class "
                f"{info.get('model_class', '?')}; build it as for training and pass it: "
                "lifelong.load(run_dir, model=..., methods=[...])"
            )
        model, built = _from_config(run_dir, shape)
        methods = built if methods is None else methods
    methods = list(methods or [])
    for method in methods:
        if overrides(method, "setup"):
            method.setup(model)  # e.g. LoRA adapters: the structure the checkpoint was saved with
    checkpoint = st.read_checkpoint(run_dir)
    if HotWeights.name not in [m.name for m in methods]:
        # the loop's own state (wsd's pre-cool-down weights): kept for training, not used for inference
        checkpoint["methods"] = [(n, s) for n, s in checkpoint["methods"] if n != HotWeights.name]
    st.restore(checkpoint, model=model, optimizer=None, methods=methods)
    tasks = shape.get("task_classes")
    return TrainedModel(
        model=model,
        methods=methods,
        kind=shape["kind"],
        input_shape=tuple(shape["input_shape"]),
        num_classes=int(shape["num_classes"]),
        label_names=list(shape.get("label_names") or range(int(shape["num_classes"]))),
        feature_names=shape.get("feature_names"),
        normalizer=shape.get("normalizer"),
        task_classes=None if tasks is None else {int(k): v for k, v in tasks.items()},
        run_dir=run_dir,
    )


def _from_config(run_dir: Path, shape: dict[str, Any]) -> tuple[nn.Module, list[Method]]:
    from lifelong.config import parse_config
    from lifelong.experiment import build_methods, model_for

    cfg = parse_config(st.read_json(run_dir / "config.json", "run config"))
    sizes = _Shape(shape["kind"], tuple(shape["input_shape"]), int(shape["num_classes"]))
    model = model_for(cfg, cast(Stream, sizes))
    return model, build_methods(cfg)


# --------------------------------------------------------------------------------------------- files

_TABLES = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet", ".pq": "parquet"}


def read_inputs(trained: TrainedModel, path: str | Path) -> tuple[np.ndarray, list[Any] | None]:
    """The features of every row of `path` (CSV, JSONL, Parquet or NPZ) in the run's layout, and the rows'
    ids (from the run's `id_column`, when the file has it)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} does not exist (or is not a file); give the file to predict on")
    found = _file_format(path, None)  # the formats and compressions the stream's files may have
    if found is None:
        raise DataError(f"{path}: unsupported file type; use .csv, .jsonl, .parquet or .npz")
    fmt = found[0]
    if fmt == "npz":
        with np.load(path, allow_pickle=False) as z:
            if "x" not in z.files:
                raise DataError(f"{path} has no array 'x' (it has {z.files}); save the inputs as x=...")
            x = z["x"]
            ids = [str(i) for i in z["id"]] if "id" in z.files else None
        shape = trained.input_shape
        if len(shape) == 3 and x.ndim == 4 and tuple(x.shape[1:]) == (shape[1], shape[2], shape[0]):
            x = x.transpose(0, 3, 1, 2)  # channels-last images, as the run's files were read
        return x, ids
    import pandas as pd

    df = _read_frame(Part(path, fmt, str(path)))
    df.columns = [str(c) for c in df.columns]
    columns = trained_columns(trained)
    id_column = columns.get("id")
    ids = df[id_column].astype(str).tolist() if id_column and id_column in df.columns else None
    names = trained.feature_names
    if names is None:  # a run on a built-in data set: every numeric column but the label is a feature
        names = [
            c for c in df.columns if c not in ("label", id_column) and pd.api.types.is_numeric_dtype(df[c])
        ]
    missing = [c for c in names if c not in df.columns]
    if missing:
        raise DataError(
            f"{path} lacks the feature columns {missing[:10]} the model was trained on "
            f"({len(names)} features; the file has columns {list(df.columns)[:10]}...)"
        )
    bad = [c for c in names if not pd.api.types.is_numeric_dtype(df[c])]
    if bad:
        raise DataError(f"{path}: feature columns {bad[:10]} are not numeric; convert them to numbers")
    return df[names].to_numpy(dtype=np.float32), ids


def trained_columns(trained: TrainedModel) -> dict[str, Any]:
    info = st.read_json(trained.run_dir / RUN_INFO, "run information")["stream_info"]
    columns = info.get("columns")
    return columns if isinstance(columns, dict) else {}


def predict_file(
    run_dir: str | Path, input_path: str | Path, out_path: str | Path, batch_size: int = 1000
) -> Path:
    """Predict every row of `input_path` with the run's final model; write `out_path` (.csv, .jsonl or
    .parquet): the row's id (or its number), `prediction` (label name), `confidence` (its probability) and
    one `p_<label>` column per class (up to 100 classes). Returns `out_path`."""
    out_path = Path(out_path)
    out_fmt = _TABLES.get(out_path.suffix.lower())
    if out_fmt is None:
        raise DataError(f"{out_path}: write predictions to a .csv, .jsonl or .parquet file")
    if out_path.is_dir():
        raise DataError(f"{out_path} is a directory; give the file to write the predictions to")
    trained = load(run_dir)
    x, ids = read_inputs(trained, input_path)
    parts = [trained.predict_proba(x[i : i + batch_size]) for i in range(0, len(x), batch_size)]
    probs = torch.cat(parts) if parts else torch.empty(0, trained.num_classes)
    confidence, predicted = probs.max(dim=1)
    import pandas as pd

    table: dict[str, Any] = {"id": ids if ids is not None else list(range(len(x)))}
    table["prediction"] = [trained.label_names[int(k)] for k in predicted]
    table["confidence"] = confidence.double().numpy()
    if trained.num_classes <= 100:
        for k, name in enumerate(trained.label_names):
            table[f"p_{name}"] = probs[:, k].double().numpy()
    df = pd.DataFrame(table)
    if out_fmt == "csv":
        data = df.to_csv(index=False).encode()
    elif out_fmt == "jsonl":
        data = "".join(json.dumps(r) + "\n" for r in df.to_dict(orient="records")).encode()
    else:
        buffer = io.BytesIO()
        df.to_parquet(buffer, index=False)
        data = buffer.getvalue()
    st.atomic_write_bytes(out_path, data)
    return out_path
