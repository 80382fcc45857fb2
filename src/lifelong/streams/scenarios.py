"""Scenario builders: a data set in, a `Stream` out.

    class_incremental(ds, experiences=5)      new classes arrive; one shared head, no task labels
    task_incremental(ds, experiences=5)       the same split, task labels exposed (masked multi-head)
    permuted(ds, experiences=5)               same classes, a fixed pixel permutation per experience
    rotated(ds, experiences=5)                same classes, images rotated by a fixed angle per experience
    online(stream, blurry=0.1)                single pass; optionally blurry boundaries between experiences

Every builder is deterministic given `seed`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace

import torch
import torch.nn.functional as F

from lifelong.datasets.base import Dataset
from lifelong.errors import DataError
from lifelong.streams.experience import Experience, Split, Stream


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def subsample(
    ds: Dataset, train_per_class: int | None = None, test_per_class: int | None = None, seed: int = 0
) -> Dataset:
    """Keep at most `*_per_class` samples of each class (a random, seeded choice): for fast runs."""

    def pick(y: torch.Tensor, per_class: int | None, g: torch.Generator) -> torch.Tensor:
        if per_class is None:
            return torch.arange(len(y))
        keep = []
        for c in torch.unique(y).tolist():
            rows = torch.nonzero(y == c).squeeze(1)
            keep.append(rows[torch.randperm(len(rows), generator=g)[:per_class]])
        return torch.sort(torch.cat(keep)).values

    g = _generator(seed)
    tr, te = pick(ds.train_y, train_per_class, g), pick(ds.test_y, test_per_class, g)
    return replace(
        ds, train_x=ds.train_x[tr], train_y=ds.train_y[tr], test_x=ds.test_x[te], test_y=ds.test_y[te]
    )


def resolve_class_order(ds: Dataset, class_order: Sequence[int] | str | None, seed: int) -> list[int]:
    """None: 0..C-1; "random": a seeded permutation; a list: checked against the data set's classes."""
    present = sorted(torch.unique(ds.train_y).tolist())
    if class_order is None:
        return present
    if class_order == "random":
        return [present[i] for i in torch.randperm(len(present), generator=_generator(seed)).tolist()]
    if isinstance(class_order, str):
        raise DataError(f"class_order must be a list of classes or 'random', got {class_order!r}")
    order = [int(c) for c in class_order]
    missing = sorted(set(order) - set(present))
    if missing:
        raise DataError(
            f"class_order names classes {missing} that {ds.name!r} does not have (it has {present}); "
            "list only existing classes"
        )
    if len(set(order)) != len(order):
        dup = sorted({c for c in order if order.count(c) > 1})
        raise DataError(f"class_order lists classes {dup} more than once; each class may appear once")
    return order


def _class_groups(order: list[int], experiences: int) -> list[list[int]]:
    if experiences > len(order):
        raise DataError(
            f"cannot split {len(order)} classes into {experiences} experiences; use at most {len(order)}"
        )
    sizes = [
        len(order) // experiences + (1 if i < len(order) % experiences else 0) for i in range(experiences)
    ]
    groups, at = [], 0
    for size in sizes:
        groups.append(order[at : at + size])
        at += size
    return groups


def _by_classes(x: torch.Tensor, y: torch.Tensor, classes: list[int]) -> Split:
    mask = torch.isin(y, torch.tensor(classes))
    return Split(x[mask], y[mask])


def class_incremental(
    ds: Dataset,
    experiences: int = 5,
    class_order: Sequence[int] | str | None = None,
    seed: int = 0,
    task_labels: bool = False,
) -> Stream:
    """Split the classes into `experiences` groups (in `class_order`); each experience holds one group.

    >>> stream = class_incremental(lifelong.datasets.load("fashion_mnist"), experiences=5)
    >>> stream[0].classes
    [0, 1]
    """
    order = resolve_class_order(ds, class_order, seed)
    exps = []
    for i, classes in enumerate(_class_groups(order, experiences)):
        train, test = _by_classes(ds.train_x, ds.train_y, classes), _by_classes(ds.test_x, ds.test_y, classes)
        if task_labels:
            train = Split(train.x, train.y, torch.full((len(train),), i, dtype=torch.long))
            test = Split(test.x, test.y, torch.full((len(test),), i, dtype=torch.long))
        exps.append(Experience(i, train, test, classes=sorted(classes), task=i if task_labels else None))
    name = f"split-{ds.name}" + ("-task" if task_labels else "")
    return Stream(
        name,
        exps,
        "classification",
        ds.num_classes,
        ds.input_shape,
        info={"class_order": order, "class_names": ds.classes},
    )


def task_incremental(
    ds: Dataset, experiences: int = 5, class_order: Sequence[int] | str | None = None, seed: int = 0
) -> Stream:
    """Class-incremental split with task labels exposed: at train and test time the model is told which
    experience a sample comes from, and predicts only among that experience's classes."""
    return class_incremental(ds, experiences, class_order, seed, task_labels=True)


def permuted(ds: Dataset, experiences: int = 5, seed: int = 0) -> Stream:
    """Domain-incremental: every experience has all classes, its pixels shuffled by a fixed permutation.
    The first experience keeps the original images (as in van de Ven et al.)."""
    n_features = math.prod(ds.input_shape)
    g = _generator(seed)
    exps = []
    for i in range(experiences):
        perm = torch.arange(n_features) if i == 0 else torch.randperm(n_features, generator=g)

        def apply(x: torch.Tensor, perm: torch.Tensor = perm) -> torch.Tensor:
            return x.reshape(len(x), -1)[:, perm].reshape(x.shape)

        exps.append(
            Experience(
                i,
                Split(apply(ds.train_x), ds.train_y),
                Split(apply(ds.test_x), ds.test_y),
                classes=sorted(torch.unique(ds.train_y).tolist()),
                domain=f"permutation {i}",
            )
        )
    return Stream(f"permuted-{ds.name}", exps, "classification", ds.num_classes, ds.input_shape)


def rotate(x: torch.Tensor, degrees: float) -> torch.Tensor:
    """Rotate images [N, C, H, W] counter-clockwise by `degrees` (bilinear, zeros outside)."""
    if x.ndim != 4:
        raise DataError(f"rotation needs images shaped [N, C, H, W], got {tuple(x.shape)}")
    a = math.radians(degrees)
    # the grid maps each output pixel to where it samples the input: the inverse rotation. Rows grow
    # downwards, so this is counter-clockwise as displayed (torch.rot90(x, 1, (-2, -1)) for 90 degrees).
    theta = torch.tensor([[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0]], dtype=x.dtype)
    grid = F.affine_grid(theta.expand(len(x), 2, 3), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def rotated(
    ds: Dataset, experiences: int = 5, angles: Sequence[float] | None = None, seed: int = 0
) -> Stream:
    """Domain-incremental: every experience has all classes, images rotated by its angle (degrees).
    Default angles: evenly spaced over [0, 180)."""
    if len(ds.input_shape) != 3:
        raise DataError(f"rotated needs image data [C, H, W]; {ds.name!r} has shape {ds.input_shape}")
    angles = list(angles) if angles is not None else [180.0 * i / experiences for i in range(experiences)]
    if len(angles) != experiences:
        raise DataError(
            f"got {len(angles)} angles for {experiences} experiences; give one angle per experience"
        )
    exps = [
        Experience(
            i,
            Split(rotate(ds.train_x, a), ds.train_y),
            Split(rotate(ds.test_x, a), ds.test_y),
            classes=sorted(torch.unique(ds.train_y).tolist()),
            domain=f"rotation {a:g}",
            info={"angle": a},
        )
        for i, a in enumerate(angles)
    ]
    return Stream(
        f"rotated-{ds.name}", exps, "classification", ds.num_classes, ds.input_shape, info={"angles": angles}
    )


def online(stream: Stream, blurry: float = 0.0, seed: int = 0) -> Stream:
    """The same experiences seen once each (single pass; use small batches, e.g. 10).

    With `blurry` > 0 the boundaries blur: that fraction of each experience's training samples moves to
    another experience chosen at random, so classes show up before and after "their" experience. Test
    splits are unchanged.
    """
    if not 0.0 <= blurry < 1.0:
        raise DataError(f"blurry must be in [0, 1), got {blurry}")
    exps = list(stream.experiences)
    if blurry > 0 and len(exps) > 1:
        g = _generator(seed)
        parts: list[list[Split]] = [[] for _ in exps]
        for i, e in enumerate(exps):
            order = torch.randperm(len(e.train), generator=g)
            n_move = int(round(blurry * len(e.train)))
            parts[i].append(e.train.subset(order[n_move:]))
            moved = order[:n_move]
            # each moved sample goes to one of the other experiences, uniformly
            target = torch.randint(0, len(exps) - 1, (n_move,), generator=g)
            target = target + (target >= i).long()
            for j in range(len(exps)):
                sel = moved[target == j]
                if len(sel):
                    parts[j].append(e.train.subset(sel))
        exps = [replace(e, train=Split.concat(parts[i])) for i, e in enumerate(exps)]
    return replace(
        stream,
        name=f"online-{stream.name}",
        experiences=exps,
        single_pass=True,
        info={**stream.info, "blurry": blurry},
    )
