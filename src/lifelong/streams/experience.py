"""The unit of new data (`Experience`) and an ordered sequence of them (`Stream`).

Everything is held as in-memory tensors: `Split.x` (features or token blocks), `Split.y` (class labels or
next-token targets) and optionally `Split.t` (task labels, exposed only in task-incremental streams).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from lifelong.errors import DataError

RARE = 5  # a class with fewer training samples than this in a whole stream is reported


def _as_tensor(name: str, value: Any) -> torch.Tensor:
    """One field of a Split as a tensor: numpy arrays converted (float as float32, the models' dtype),
    integer labels as int64 (what cross-entropy and indexing take); anything else refused up front."""
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in "biuf":
            what = "features" if name == "x" else "labels"
            raise DataError(
                f"Split {name} is a numpy array of dtype {value.dtype}; {what} must be numbers (encode text "
                "or categories as numbers, and convert object arrays with .astype(...) first)"
            )
        value = torch.from_numpy(np.ascontiguousarray(value))
        if name == "x" and value.is_floating_point():
            value = value.to(torch.float32)
    elif not isinstance(value, torch.Tensor):
        raise DataError(
            f"Split {name} is a {type(value).__name__}; give a torch.Tensor or a numpy array "
            "(e.g. torch.as_tensor(...))"
        )
    if name != "x" and not (value.is_floating_point() or value.is_complex()) and value.dtype != torch.int64:
        value = value.to(torch.int64)  # int32/uint8/bool labels index and compare as class ids
    return value


@dataclass(frozen=True)
class Split:
    """Aligned tensors of one split: `x[i]`, `y[i]` and (optionally) task label `t[i]` are one sample.

    Numpy arrays are accepted and converted (floating `x` to float32); integer labels become int64.
    """

    x: torch.Tensor
    y: torch.Tensor
    t: torch.Tensor | None = None

    def __post_init__(self) -> None:
        # cheap (no pass over the data): splits are also made for every training batch
        for name in ("x", "y", "t"):
            value = getattr(self, name)
            if value is not None and not (
                isinstance(value, torch.Tensor) and (name == "x" or value.dtype == torch.int64)
            ):
                object.__setattr__(self, name, _as_tensor(name, value))
        if self.x.shape[0] != self.y.shape[0]:
            raise DataError(f"x has {self.x.shape[0]} rows but y has {self.y.shape[0]}; they must align.")
        if self.t is not None and self.t.shape[0] != self.x.shape[0]:
            raise DataError(f"t has {self.t.shape[0]} rows but x has {self.x.shape[0]}; they must align.")

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def subset(self, index: torch.Tensor) -> Split:
        return Split(self.x[index], self.y[index], None if self.t is None else self.t[index])

    @staticmethod
    def concat(splits: Sequence[Split]) -> Split:
        if not splits:
            raise DataError("cannot concatenate zero splits")
        has_t = [s.t is not None for s in splits]
        if any(has_t) and not all(has_t):
            raise DataError("cannot concatenate splits where only some carry task labels")
        return Split(
            torch.cat([s.x for s in splits]),
            torch.cat([s.y for s in splits]),
            torch.cat([s.t for s in splits]) if all(has_t) else None,  # type: ignore[misc]
        )


@dataclass
class Experience:
    """One step of the stream: what arrives at once.

    `classes` lists the labels present in `train` (classification only); `task` is the task label, set only
    when the scenario exposes it (task-incremental); `domain` names the domain (permutation, rotation,
    corpus, file) when the scenario has one.
    """

    id: int
    train: Split
    test: Split
    classes: list[int] | None = None
    task: int | None = None
    domain: str | None = None
    info: dict[str, Any] = field(default_factory=dict)
    # training samples that arrive without labels (`unlabeled.y` is -1): what self-training learns from.
    # `unlabeled_truth` holds their real labels where the scenario held them back (None for data that
    # never had any): for diagnostics only (pseudo-label precision), never for training
    unlabeled: Split | None = None
    unlabeled_truth: torch.Tensor | None = None

    def __repr__(self) -> str:
        what = f"classes={self.classes}" if self.classes is not None else f"domain={self.domain!r}"
        unlabeled = "" if self.unlabeled is None else f", unlabeled={len(self.unlabeled)}"
        return f"Experience(id={self.id}, train={len(self.train)}{unlabeled}, test={len(self.test)}, {what})"


@dataclass
class Stream:
    """An ordered list of experiences plus what a model needs to know about them.

    `kind` is "classification" or "language_modeling"; `num_classes` is the number of output units
    (classes, or the vocabulary size for language modelling); `input_shape` is the shape of one `x`.
    `single_pass` asks the learner to see each training sample once (online scenarios).
    """

    name: str
    experiences: list[Experience]
    kind: str
    num_classes: int
    input_shape: tuple[int, ...]
    single_pass: bool = False
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in ("classification", "language_modeling"):
            raise DataError(
                f"stream kind {self.kind!r} is unknown; use 'classification' or 'language_modeling'"
            )
        if not self.experiences:
            raise DataError(f"stream {self.name!r} has no experiences")
        for e in self.experiences:
            if len(e.train) == 0:
                raise DataError(
                    f"experience {e.id + 1} of stream {self.name!r} has an empty training split; "
                    "remove it or give it data (check the class order, file or filter that produced it)"
                )
            if len(e.test) == 0:
                raise DataError(
                    f"experience {e.id + 1} of stream {self.name!r} has an empty test split; every "
                    "experience needs test data for the accuracy matrix (raise test_fraction or add test "
                    "rows)"
                )
            for split_name, split in (("train", e.train), ("test", e.test)):
                if split.y.is_floating_point() or split.y.is_complex():
                    what = "class labels 0..K-1" if self.kind == "classification" else "token ids"
                    raise DataError(
                        f"experience {e.id + 1} ({split_name} split) of stream {self.name!r} has labels of "
                        f"dtype {split.y.dtype}; {self.kind} needs integer {what} (y.long() if they are "
                        "whole numbers; a regression target does not fit this stream)"
                    )
        if self.kind == "classification":
            _warn_about_classes(self)

    def __len__(self) -> int:
        return len(self.experiences)

    def __iter__(self):
        return iter(self.experiences)

    def __getitem__(self, i: int) -> Experience:
        return self.experiences[i]

    @property
    def test_sets(self) -> list[Split]:
        return [e.test for e in self.experiences]

    @property
    def task_classes(self) -> dict[int, list[int]] | None:
        """Task label -> classes of that task, when the stream exposes task labels."""
        if any(e.task is None for e in self.experiences):
            return None
        out: dict[int, list[int]] = {}
        for e in self.experiences:
            out.setdefault(int(e.task), [])  # type: ignore[arg-type]
            out[int(e.task)] = sorted(set(out[int(e.task)]) | set(e.classes or []))  # type: ignore[arg-type]
        return out

    def __repr__(self) -> str:
        return (
            f"Stream({self.name!r}, {len(self.experiences)} experiences, kind={self.kind}, "
            f"num_classes={self.num_classes}, input_shape={self.input_shape})"
        )


def _warn_about_classes(stream: Stream) -> None:
    """Warn about classes the model cannot learn: seen only in test data, or in very few training samples.
    (Negative labels are refused by the check against the model's outputs, before training.)"""
    size = stream.num_classes  # labels outside 0..num_classes-1 are refused before training, not here
    train = np.zeros(size, dtype=np.int64)
    tested: dict[int, list[str]] = {}
    for e in stream:
        train += _counts(e.train.y, size)
        where = f"{e.id + 1}" if e.domain is None else f"{e.id + 1} ({e.domain})"  # 1-based, as displayed
        for c in np.flatnonzero(_counts(e.test.y, size)):
            tested.setdefault(int(c), []).append(where)
    names = stream.info.get("label_names")

    def called(c: int) -> str:
        if names is None or len(names) != stream.num_classes or c >= len(names) or names[c] == c:
            return str(c)
        return f"{c} ({names[c]!r})" if isinstance(names[c], str) else f"{c} (label {names[c]})"

    only_test = {c: where for c, where in tested.items() if train[c] == 0}
    if only_test:
        listed = "; ".join(f"{called(c)} in experience {', '.join(w)}" for c, w in sorted(only_test.items()))
        warnings.warn(
            f"stream {stream.name!r}: classes that appear only in test data and never in a training split: "
            f"{listed}. The model cannot learn them and scores 0 on them; add training samples of these "
            "classes or drop them from the test data",
            UserWarning,
            stacklevel=4,
        )
    rare = [c for c in np.flatnonzero(train) if train[c] < RARE]
    if rare:
        listed = ", ".join(f"{called(int(c))}: {int(train[c])}" for c in rare)
        warnings.warn(
            f"stream {stream.name!r}: classes with fewer than {RARE} training samples in the whole stream "
            f"({listed}); the model will barely learn them. Add samples, merge them into other classes, or "
            "drop them",
            UserWarning,
            stacklevel=4,
        )


def _counts(y: torch.Tensor, size: int) -> np.ndarray:
    """Samples per class 0..size-1 (other labels are left to the check against the model's outputs)."""
    y = y[(y >= 0) & (y < size)]
    return torch.bincount(y, minlength=size).cpu().numpy()
