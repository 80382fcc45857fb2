"""The weighted quadratic penalty `sum_i w_i (theta_i - theta*_i)^2` of L2, EWC, online EWC, SI and MAS,
one fused pass per weight tensor, and the check of a penalty's strength."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from lifelong.errors import ConfigError, StateError
from lifelong.methods.tensor_state import Tensors, placed


def quadratic_penalty(model: nn.Module, anchor: Tensors, weight: Tensors | None = None) -> torch.Tensor:
    """`sum_i weight_i * (theta_i - anchor_i)^2` over the weights named in `anchor` (weight 1 if None)."""
    params = dict(model.named_parameters())
    missing = sorted(set(anchor) - set(params))
    if missing:
        raise StateError(
            f"the regulariser's stored weights name {missing[:3]} but the model has no such parameters; "
            "the model's structure changed since they were stored: resume with the same model"
        )
    device = next(iter(params.values())).device
    placed(anchor, device)
    if weight is not None:
        placed(weight, device)
    total = torch.zeros((), device=device)
    for name in params:  # the model's order, not the state's: a restored state sums in the same order
        if name in anchor:
            w = None if weight is None else weight[name]
            total = total + _WeightedSquare.apply(params[name], anchor[name], w)
    return total


class _WeightedSquare(torch.autograd.Function):
    """sum(w * (theta - a)^2) with its gradient 2 w (theta - a) written by hand: four passes over the
    weights per step instead of the nine autograd takes (the penalty runs at every step)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, theta: torch.Tensor, anchor: torch.Tensor, weight: torch.Tensor | None
    ) -> torch.Tensor:
        diff = theta.detach() - anchor
        weighted = diff if weight is None else weight * diff
        ctx.weighted = weighted  # an intermediate, not an input: kept on ctx (no double backward)
        return torch.dot(weighted.flatten(), diff.flatten())

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:  # type: ignore[override]
        return ctx.weighted * (2 * grad), None, None


def check_strength(name: str, strength: float) -> None:
    if not strength >= 0:  # also refuses nan
        raise ConfigError(f"{name} strength must be at least 0, got {strength}")
