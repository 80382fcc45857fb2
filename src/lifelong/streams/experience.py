"""The unit of new data (`Experience`) and an ordered sequence of them (`Stream`).

Everything is held as in-memory tensors: `Split.x` (features or token blocks), `Split.y` (class labels or
next-token targets) and optionally `Split.t` (task labels, exposed only in task-incremental streams).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from lifelong.errors import DataError


@dataclass(frozen=True)
class Split:
    """Aligned tensors of one split: `x[i]`, `y[i]` and (optionally) task label `t[i]` are one sample."""

    x: torch.Tensor
    y: torch.Tensor
    t: torch.Tensor | None = None

    def __post_init__(self) -> None:
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

    def __repr__(self) -> str:
        what = f"classes={self.classes}" if self.classes is not None else f"domain={self.domain!r}"
        return f"Experience(id={self.id}, train={len(self.train)}, test={len(self.test)}, {what})"


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
                    f"experience {e.id} of stream {self.name!r} has an empty training split; "
                    "remove it or give it data (check the class order, file or filter that produced it)"
                )
            if len(e.test) == 0:
                raise DataError(
                    f"experience {e.id} of stream {self.name!r} has an empty test split; every experience "
                    "needs test data for the accuracy matrix (raise test_fraction or add test rows)"
                )

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
