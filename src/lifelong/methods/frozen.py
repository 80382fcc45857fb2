"""Frozen features: the shared regime of classifiers learned in closed form (NCM, analytic learning).

The model is trained normally on the first experience (or not at all), and from then on its features never
change: the `data` hook hands the learner an empty training split, so the loop takes no gradient step.
What the method learns from each experience it learns at `end`, from the features of that experience's
training data, and `predict` scores test samples with that classifier instead of the model's head.

Why an empty split rather than frozen parameters: the learner builds its optimizer over the parameters
that require gradients, and an optimizer over no parameter at all is an error; with zero batches nothing
is stepped, weight decay and momentum included, so the weights stay bit-identical.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from lifelong.errors import ConfigError
from lifelong.methods.base import Context, Method
from lifelong.models import features_and_head
from lifelong.streams.experience import Split, Stream

CHUNK = 1024  # samples per forward pass when extracting features (bounded memory, few Python steps)


def empty_like(split: Split) -> Split:
    """A split with no rows but the dtypes and sample shape of `split`."""
    return split.subset(torch.arange(0))


@torch.no_grad()
def extract_features(model: nn.Module, method: str, x: torch.Tensor) -> torch.Tensor:
    """`model.features(x)` flattened to [N, d], in eval mode and `CHUNK` samples at a time, on the model's
    device. The model's train/eval mode is restored afterwards."""
    features, _ = features_and_head(model, method)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()  # dropout off, batch-norm statistics untouched: the features are a fixed function
    try:
        parts = [features(x[i : i + CHUNK].to(device)).flatten(1) for i in range(0, len(x), CHUNK)]
    finally:
        model.train(was_training)
    return torch.cat(parts)


class FrozenFeatures(Method, ABC):
    """Base class: train on the first experience if `train_first`, then no gradient training at all; at each
    experience's `end`, `absorb` the features and labels of its training data. Subclasses implement
    `absorb` and `predict` (and their state)."""

    alone = True  # nothing trains after the first experience: other methods would have nothing to act on

    def __init__(self, train_first: bool = True) -> None:
        self.train_first = train_first

    def check(self, stream: Stream, objective: Any, methods: Sequence[Method]) -> None:
        if stream.kind != "classification":
            raise ConfigError(
                f"method {self.name!r} classifies with class statistics of frozen features and needs a "
                f"classification stream; {stream.name!r} is {stream.kind}: use 'replay', 'lwf' or 'lora' "
                "for language modelling"
            )

    def setup(self, model: nn.Module) -> None:
        # fails before anything trains when the model has no `features` / `head` pair
        features_and_head(model, self.name)

    def data(self, ctx: Context, train: Split) -> Split:
        if self.train_first and ctx.index == 0:
            return train
        return empty_like(train)  # zero batches: the learner takes no step, the features stay frozen

    def end(self, ctx: Context) -> None:
        train = ctx.experience.train
        _, head = features_and_head(ctx.model, self.name)
        self.absorb(extract_features(ctx.model, self.name, train.x), train.y, head.out_features)

    @abstractmethod
    def absorb(self, features: torch.Tensor, y: torch.Tensor, num_classes: int) -> None:
        """Learn from one experience's training features [N, d] and labels [N] (NCM: class sums; analytic:
        the recursive least-squares update)."""
