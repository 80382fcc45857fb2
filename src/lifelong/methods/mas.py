"""Memory Aware Synapses (MAS).

Aljundi, Babiloni, Elhoseiny, Rohrbach and Tuytelaars (ECCV 2018), "Memory Aware Synapses: Learning what
(not) to forget". A weight matters if the function the network computes is sensitive to it: at the end of
each experience, Omega_i += mean over samples x of |d ||f(x)||_2^2 / d theta_i|, f(x) the outputs, with no
label needed (the paper's unsupervised, global importance). Later experiences pay
`strength * sum_i Omega_i (theta_i - theta*_i)^2` around the weights theta* at the end of the previous one.

Choices. Per-sample gradients are vectorised with `torch.func` (vmap(grad), in chunks), as for EWC (for
language modelling they come from a loop over sequences, which Hugging Face models need), on
`samples` training samples of the experience (a seeded random subset; the last experience of a stream is
not measured, nothing would use it). In task-incremental streams the outputs are the sample's own head (the
objective masks the other tasks' outputs to -inf; only the finite ones count). For language modelling the
squared norm of the [T, vocab] outputs is divided by T (the mean over positions), so the importance does not
grow with the block size. Importances add up over experiences, as in the paper.
"""

from __future__ import annotations

from typing import Any

import torch

from lifelong.methods.base import Context
from lifelong.methods.ewc import SampleImportance, merged, per_sample_gradients, weights_of
from lifelong.methods.penalty import quadratic_penalty
from lifelong.methods.tensor_state import Tensors, from_state, to_state
from lifelong.streams.experience import Split


def squared_output_norm(out: torch.Tensor) -> torch.Tensor:
    """||f(x)||^2 of one sample's outputs [1, C] (or [1, T, vocab]: mean over the T positions), counting
    only finite outputs (a task-incremental head masks the others to -inf)."""
    finite = torch.where(torch.isfinite(out), out, torch.zeros_like(out))
    positions = out[..., 0].numel()
    return finite.square().sum() / positions


DEFAULT_STRENGTH = 0.01


class MAS(SampleImportance):
    """Options: `strength` (lambda: the penalty is lambda * sum_i Omega_i (theta_i - theta*_i)^2), `samples`
    (training samples of each experience the importance is measured on; None: all), `seed` (which
    samples)."""

    name = "mas"

    def __init__(self, strength: float = DEFAULT_STRENGTH, samples: int | None = 1000, seed: int = 0) -> None:
        super().__init__(strength, samples, seed)
        self.omega: Tensors | None = None  # importance, summed over past experiences
        self.anchor: Tensors | None = None  # weights at the end of the previous experience

    def params(self) -> dict[str, Any]:
        return {"strength": self.strength, "samples": self.samples}

    def importance(self, ctx: Context) -> Tensors:
        """This experience's importance: mean |d ||f(x)||^2 / d theta| over (a sample of) its training
        data."""
        return per_sample_gradients(
            ctx.model, ctx.objective, self.data_sample(ctx), squared_output_norm, torch.abs
        )

    def loss(self, ctx: Context, batch: Split, out: torch.Tensor) -> torch.Tensor | None:
        if self.omega is None or self.anchor is None or self.strength == 0:
            return None
        return self.strength * quadratic_penalty(ctx.model, self.anchor, self.omega)

    def end(self, ctx: Context) -> None:
        if not self.measured(ctx):
            return
        self.omega = merged(self.omega, self.importance(ctx))
        self.anchor = weights_of(ctx.model, self.omega)

    def state_dict(self) -> dict[str, Any]:
        return {**to_state("omega", self.omega), **to_state("anchor", self.anchor)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.omega = from_state("omega", state)
        self.anchor = from_state("anchor", state)
