"""Synaptic Intelligence (SI).

Zenke, Poole and Ganguli (ICML 2017), "Continual Learning Through Synaptic Intelligence". While an
experience trains, each weight's contribution to the drop of the loss is integrated along the trajectory,
omega_i = -sum_steps g_i * delta_theta_i; at the experience's end it becomes an importance,
Omega_i += omega_i / (Delta_i^2 + damping), Delta_i the weight's total change over the experience, and the
weights theta* are stored. Later experiences pay `strength * sum_i Omega_i (theta_i - theta*_i)^2`.

Choices. The gradient is that of the total loss the optimizer follows (task loss plus every penalty, SI's
own included), as in van de Ven et al.'s `continual-learning` code; the task loss alone would need a second
backward pass every step. It is the gradient before clipping (`after_backward` runs before it). Step k's
gradient is known in `after_backward` while the weights are still those before the step, so the step's
contribution -g_k * (theta_k - theta_{k-1}) is added at the next `after_backward` (or at `end` for the last
step): the gradient and the weights it was taken at wait in the state until then, which keeps a resumed
run exact. The path integral also runs during the first experience (its importance is needed from the
second); Omega is not clipped at zero, as in the paper.
"""

from __future__ import annotations

from typing import Any

import torch

from lifelong.errors import ConfigError
from lifelong.methods.base import Context, Method
from lifelong.methods.ewc import merged, weights_of
from lifelong.methods.penalty import check_strength, quadratic_penalty
from lifelong.methods.tensor_state import Tensors, from_state, placed, snapshot, to_state, trainable
from lifelong.streams.experience import Split

DEFAULT_STRENGTH = 1.0


class SI(Method):
    """Options: `strength` (c: the penalty is c * sum_i Omega_i (theta_i - theta*_i)^2), `damping` (xi:
    bounds Omega where a weight hardly moved, Omega_i += omega_i / (Delta_i^2 + xi))."""

    name = "si"

    def __init__(self, strength: float = DEFAULT_STRENGTH, damping: float = 0.1) -> None:
        check_strength(self.name, strength)
        if not damping > 0:
            raise ConfigError(f"{self.name} damping must be greater than 0, got {damping}")
        self.strength, self.damping = strength, damping
        self.omega: Tensors | None = None  # Omega: importance summed over past experiences
        self.anchor: Tensors | None = None  # theta*: weights at the end of the previous experience
        self.start_weights: Tensors | None = None  # weights when the current experience began
        self.path: Tensors | None = None  # omega of the current experience so far
        # the last step's gradient and the weights it was taken at, until the step's move is known; the
        # buffers are reused from step to step (no allocation per step), `pending` says if they hold one
        self.pending_grad: Tensors = {}
        self.pending_weights: Tensors = {}
        self.pending = False

    def params(self) -> dict[str, Any]:
        return {"strength": self.strength, "damping": self.damping}

    def start(self, ctx: Context) -> None:
        self.start_weights = snapshot(ctx.model)
        self.path = {name: torch.zeros_like(w) for name, w in self.start_weights.items()}
        self.pending = False

    def loss(self, ctx: Context, batch: Split, out: torch.Tensor) -> torch.Tensor | None:
        if self.omega is None or self.anchor is None or self.strength == 0:
            return None
        return self.strength * quadratic_penalty(ctx.model, self.anchor, self.omega)

    def after_backward(self, ctx: Context) -> None:
        self._settle(ctx)
        if self.path is None or self.start_weights is None:
            raise ConfigError(
                "SI saw a training step before `start`: call start(ctx) when an experience begins"
            )
        weights = trainable(ctx.model)
        for name, p in weights.items():
            if name not in self.path:  # a weight that began to train after `start` (another method froze it)
                self.start_weights[name] = p.detach().clone()
                self.path[name] = torch.zeros_like(p)
        for buffers in (self.pending_grad, self.pending_weights):
            for name in [n for n in buffers if n not in weights]:  # no longer trains
                del buffers[name]
        for name, p in weights.items():
            if name not in self.pending_grad or self.pending_grad[name].device != p.device:
                self.pending_grad[name], self.pending_weights[name] = torch.empty_like(p), torch.empty_like(p)
            if p.grad is None:
                self.pending_grad[name].zero_()
            else:
                self.pending_grad[name].copy_(p.grad)
            self.pending_weights[name].copy_(p.detach())
        self.pending = True

    def _settle(self, ctx: Context) -> None:
        """Add the last step's contribution -g * (theta_now - theta_then) to the path integral."""
        if not self.pending or self.path is None:
            return
        params = dict(ctx.model.named_parameters())
        device = next(iter(params.values())).device
        for tensors in (self.path, self.pending_grad, self.pending_weights):
            placed(tensors, device)
        for name, g in self.pending_grad.items():
            self.path[name].addcmul_(g, params[name].detach() - self.pending_weights[name], value=-1)
        self.pending = False

    def end(self, ctx: Context) -> None:
        self._settle(ctx)
        if self.path is None or self.start_weights is None:
            return  # `start` was not called: nothing was integrated
        params = dict(ctx.model.named_parameters())
        device = next(iter(params.values())).device
        placed(self.path, device)
        placed(self.start_weights, device)
        importance = {}
        for name, path in self.path.items():
            moved = params[name].detach() - self.start_weights[name]
            importance[name] = path / (moved.square() + self.damping)
        self.omega = merged(self.omega, importance)
        self.anchor = weights_of(ctx.model, self.omega)
        self.path = self.start_weights = None

    def state_dict(self) -> dict[str, Any]:
        return {
            **to_state("omega", self.omega),
            **to_state("anchor", self.anchor),
            **to_state("start", self.start_weights),
            **to_state("path", self.path),
            "pending": self.pending,
            **(to_state("pending_grad", self.pending_grad) if self.pending else {}),
            **(to_state("pending_weights", self.pending_weights) if self.pending else {}),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.omega = from_state("omega", state)
        self.anchor = from_state("anchor", state)
        self.start_weights = from_state("start", state)
        self.path = from_state("path", state)
        self.pending = bool(state.get("pending", False))
        self.pending_grad = from_state("pending_grad", state) or {}
        self.pending_weights = from_state("pending_weights", state) or {}
