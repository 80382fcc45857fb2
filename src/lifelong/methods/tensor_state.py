"""Named weight tensors as method state: the trainable weights of a model, snapshots of them, moving
stored tensors to the model's device, and flat `prefix.name` state entries (what `state_dict` returns).
Shared by the methods that keep copies of weights (L2, EWC, online EWC, SI, MAS, LwF)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

Tensors = dict[str, torch.Tensor]


def trainable(model: nn.Module) -> dict[str, nn.Parameter]:
    """The weights that train, by name (tied weights once)."""
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def snapshot(model: nn.Module) -> Tensors:
    """A detached copy of the trainable weights."""
    return {name: p.detach().clone() for name, p in trainable(model).items()}


def placed(tensors: Tensors, device: torch.device) -> Tensors:
    """`tensors` on `device`, moved in place (a no-op once they are there)."""
    for name, value in tensors.items():
        if value.device != device:
            tensors[name] = value.to(device)
    return tensors


def to_state(prefix: str, tensors: Tensors | None) -> dict[str, torch.Tensor]:
    """`tensors` as flat state entries `prefix.name` (copies: state tensors never share storage)."""
    return {f"{prefix}.{name}": t.detach().clone() for name, t in (tensors or {}).items()}


def from_state(prefix: str, state: dict[str, Any]) -> Tensors | None:
    """The entries `prefix.*` of a flat state, or None if it has none."""
    found = {k.removeprefix(f"{prefix}."): v for k, v in state.items() if k.startswith(f"{prefix}.")}
    return {k: v.clone() for k, v in found.items()} or None
