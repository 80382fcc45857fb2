"""Holding back labels: most of what arrives in production is unlabeled. `hold_back_labels` keeps the labels
of part of each experience's training data and moves the rest to `experience.unlabeled` (labels -1), keeping
their real labels in `experience.unlabeled_truth` for diagnostics only.

Which samples keep their label:
- `label_fraction=f`: a share f of each class in each experience (at least one per class present);
- `labels_per_class=k`: k per class in each experience (all of a class that has fewer);
- `label_bias=b` (with either): a labelling that depends on the input, as in selection-bias experiments
  (Odonnat et al. 2024, T-similarity): within a class, the samples on one side of the input space (above
  the class's median along one fixed random direction) are drawn for labelling with weight 1 + b, the
  others with weight 1 - b, so about a share (1 + b) / 2 of the labels comes from one half: b = 0 is
  uniform, b = 0.8 takes about 90 % of the labels from one half, b = 1 all of them. The labelled set then
  does not look like the stream.

The choice is a pure function of the data and `seed`, so a resumed or continued run rebuilds the same split.

    >>> import torch
    >>> from lifelong.streams.experience import Experience, Split, Stream
    >>> x, y = torch.randn(40, 3), torch.arange(40) % 2
    >>> e = Experience(0, Split(x, y), Split(x, y), classes=[0, 1])
    >>> s = Stream("toy", [e], "classification", 2, (3,))
    >>> held = hold_back_labels(s, label_fraction=0.25)
    >>> len(held[0].train), len(held[0].unlabeled), int(held[0].unlabeled.y.max())
    (10, 30, -1)
"""

from __future__ import annotations

from dataclasses import replace

import torch

from lifelong.errors import ConfigError, DataError
from lifelong.streams.experience import Experience, Split, Stream


def check_options(
    label_fraction: float | None, labels_per_class: int | None, label_bias: float | None
) -> None:
    if label_fraction is not None and not 0.0 < label_fraction <= 1.0:
        raise ConfigError(f"label_fraction must lie in (0, 1] (a share of each class), got {label_fraction}")
    if labels_per_class is not None and labels_per_class < 1:
        raise ConfigError(f"labels_per_class must be at least 1, got {labels_per_class}")
    if label_fraction is not None and labels_per_class is not None:
        raise ConfigError("give label_fraction or labels_per_class, not both")
    if label_bias is not None:
        if not 0.0 <= label_bias <= 1.0:
            raise ConfigError(f"label_bias must lie in [0, 1], got {label_bias}")
        if label_fraction is None and labels_per_class is None:
            raise ConfigError("label_bias needs label_fraction or labels_per_class: how many labels to draw")


def _direction(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed + 7919)
    d = torch.randn(int(torch.tensor(shape).prod()), generator=g, dtype=torch.float64)
    return d / d.norm()


def _pick(
    experience: Experience,
    label_fraction: float | None,
    labels_per_class: int | None,
    label_bias: float,
    direction: torch.Tensor,
    g: torch.Generator,
) -> torch.Tensor:
    """A bool mask over the training rows: True keeps the label."""
    y = experience.train.y
    keep = torch.zeros(len(y), dtype=torch.bool)
    if y.ndim != 1:
        raise DataError("labels can be held back only for classification (one class label per sample)")
    projection = experience.train.x.reshape(len(y), -1).to(torch.float64) @ direction
    for c in torch.unique(y).tolist():
        rows = torch.nonzero(y == c).squeeze(1)
        n = len(rows)
        if labels_per_class is not None:
            k = min(n, labels_per_class)
        else:
            assert label_fraction is not None
            k = max(1, round(label_fraction * n))
        if label_bias > 0:
            rank = torch.argsort(torch.argsort(projection[rows])).to(torch.float64)
            upper = rank >= n / 2
            weights = torch.where(upper, 1.0 + label_bias, 1.0 - label_bias).to(torch.float64)
            if label_bias >= 1.0:  # only the upper half: all of it when more labels are asked than it holds
                weights = torch.where(upper, 1.0, 1e-12).to(torch.float64)
            chosen = torch.multinomial(weights, k, replacement=False, generator=g)
        else:
            chosen = torch.randperm(n, generator=g)[:k]
        keep[rows[chosen]] = True
    return keep


def hold_back_labels(
    stream: Stream,
    label_fraction: float | None = None,
    labels_per_class: int | None = None,
    label_bias: float | None = None,
    seed: int = 0,
) -> Stream:
    """`stream` with the labels of part of each experience's training data held back (see the module
    docstring). Refuses a class left with no labelled sample in the whole stream, naming it."""
    check_options(label_fraction, labels_per_class, label_bias)
    if label_fraction is None and labels_per_class is None:
        return stream
    if stream.kind != "classification":
        raise ConfigError(
            "label_fraction / labels_per_class hold back class labels: they apply to classification streams, "
            "not to language modelling (whose text needs no labels)"
        )
    g = torch.Generator().manual_seed(seed)
    direction = _direction(tuple(stream.input_shape), seed)
    out = []
    for e in stream:
        keep = _pick(e, label_fraction, labels_per_class, label_bias or 0.0, direction, g)
        labelled, rest = torch.nonzero(keep).squeeze(1), torch.nonzero(~keep).squeeze(1)
        hidden = e.train.subset(rest)
        unlabeled = Split(hidden.x, torch.full_like(hidden.y, -1), hidden.t)
        if e.unlabeled is not None:  # data that came without labels stays unlabeled
            unlabeled = Split.concat([unlabeled, e.unlabeled])
            truth_before = (
                e.unlabeled_truth if e.unlabeled_truth is not None else torch.full_like(e.unlabeled.y, -1)
            )
            truth = torch.cat([hidden.y, truth_before])
        else:
            truth = hidden.y
        out.append(replace(e, train=e.train.subset(labelled), unlabeled=unlabeled, unlabeled_truth=truth))
    labelled_classes = set(torch.cat([e.train.y for e in out]).tolist())
    present = set(torch.cat([e.train.y for e in stream]).tolist())
    missing = sorted(present - labelled_classes)
    if missing:
        names = stream.info.get("label_names")
        described = ", ".join(str(names[c]) if names else str(c) for c in missing)
        raise DataError(
            f"class(es) {described} would have no labelled sample; raise label_fraction / labels_per_class"
        )
    return replace(stream, experiences=out)
