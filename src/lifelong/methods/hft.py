"""HFT: half fine-tuning.

Hui, Zhang, Wang, Xu, Sun and Wu, 2024, "HFT: Half Fine-Tuning for Large Language Models" (arXiv:2404.18466;
ACL 2025).

At every experience a random half of the model's parameter matrices is frozen and the other half trains:
the frozen half keeps what earlier experiences (or pre-training) put there, which limits forgetting
without adding any parameter. The paper picks half of the modules *within each layer* (e.g. two of the
four attention projections), re-drawn at each training stage.

Choices. The unit is a module's own parameters (a Linear's weight and bias go together, as the paper's
matrices do). Units are grouped by layer, the module path up to its first numeric part (`blocks.0`,
`features.3`; modules outside any numbered container form one group); a systematic sample over the units,
shuffled within each layer, freezes `fraction` of them: every layer gets ⌊n·fraction⌋ or ⌈n·fraction⌉ of its n
units, and one-unit layers (an MLP's hidden layers) alternate. The output layer (`model.head`, a Hugging Face
model's output embeddings (`lm_head`), else the last module with parameters) always trains, a tied embedding
with it: new classes or a new vocabulary distribution must reach the outputs. On a Llama the units of layer i
are `model.layers.i`'s q/k/v/o and gate/up/down projections and its two norms. The choice is a pure function
of (seed, experience index), so a resumed run makes it again without state. Freezing sets the gradients to
None in `after_backward`: torch optimizers skip such parameters entirely, so neither momentum nor weight decay
moves them. Place HFT before a method that reads gradients (A-GEM, GEM) so that it sees only the trainable
half.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from lifelong.errors import ConfigError
from lifelong.methods.base import Context, Method
from lifelong.methods.lora import hugging_face_model


class HFT(Method):
    """Options: `fraction` (share of the parameter units, per layer, frozen at each experience; the paper's
    0.5), `seed` (the choice; each experience draws its own)."""

    name = "hft"
    selects_trainable = True

    def __init__(self, fraction: float = 0.5, seed: int = 0) -> None:
        if not 0.0 < fraction < 1.0:
            raise ConfigError(f"hft fraction must be strictly between 0 and 1, got {fraction}")
        self.fraction, self.seed = float(fraction), seed
        # (experience index, id of the model, frozen tensors): the choice of the running experience
        self._frozen: tuple[int, int, list[nn.Parameter]] | None = None

    def params(self) -> dict[str, Any]:
        return {"fraction": self.fraction}

    def setup(self, model: nn.Module) -> None:
        if not _units(model):
            raise ConfigError(
                f"method 'hft' has nothing to freeze: every trainable parameter of {type(model).__name__} is "
                "in its output layer; use a model with hidden layers"
            )

    def frozen_names(self, model: nn.Module, index: int) -> list[str]:
        """Names of the parameters frozen during experience `index`."""
        names: list[str] = []
        for unit in _choose(_units(model), self.fraction, _mix(self.seed, index)):
            names += [name for name, _ in unit]
        return names

    def after_backward(self, ctx: Context) -> None:
        if self._frozen is None or self._frozen[:2] != (ctx.index, id(ctx.model)):
            # recomputed once per experience (and after a resume): a pure function of (seed, index)
            chosen = _choose(_units(ctx.model), self.fraction, _mix(self.seed, ctx.index))
            self._frozen = (ctx.index, id(ctx.model), [p for unit in chosen for _, p in unit])
        for p in self._frozen[2]:
            p.grad = None  # the optimizer skips the tensor: no step, no momentum, no weight decay


def _output_layer(model: nn.Module) -> nn.Module | None:
    """`model.head`; a Hugging Face model's output embeddings (`lm_head`); else the last module with
    parameters of its own."""
    head = getattr(model, "head", None)
    if isinstance(head, nn.Module) and any(True for _ in head.parameters()):
        return head
    hf = hugging_face_model(model)
    output_embeddings = getattr(hf, "get_output_embeddings", None)
    if callable(output_embeddings):
        head = output_embeddings()
        if isinstance(head, nn.Module) and any(True for _ in head.parameters()):
            return head
    owners = [m for m in model.modules() if any(True for _ in m.parameters(recurse=False))]
    return owners[-1] if owners else None


def _layer(module_name: str) -> str:
    parts = module_name.split(".")
    for i, part in enumerate(parts):
        if part.isdigit():
            return ".".join(parts[: i + 1])
    return ""


def _units(model: nn.Module) -> list[tuple[str, list[tuple[str, nn.Parameter]]]]:
    """(layer, [(name, parameter), ...]) for each module's own trainable parameters, in model order; the
    output layer's parameters (and anything tied to them) excluded, each tensor listed once."""
    head = _output_layer(model)
    seen: set[int] = {id(p) for p in head.parameters()} if head is not None else set()
    units = []
    for module_name, module in model.named_modules():
        own = []
        for pname, p in module.named_parameters(recurse=False):
            if p.requires_grad and id(p) not in seen:
                seen.add(id(p))
                own.append((f"{module_name}.{pname}" if module_name else pname, p))
        if own:
            units.append((_layer(module_name), own))
    return units


def _choose(
    units: list[tuple[str, list[tuple[str, nn.Parameter]]]], fraction: float, seed: int
) -> list[list[tuple[str, nn.Parameter]]]:
    """A systematic sample of `fraction` of the units, stratified by layer (see the module docstring)."""
    g = torch.Generator().manual_seed(seed)
    layers: dict[str, list[list[tuple[str, nn.Parameter]]]] = {}
    for layer, unit in units:
        layers.setdefault(layer, []).append(unit)
    ordered = []
    for members in layers.values():
        ordered += [members[i] for i in torch.randperm(len(members), generator=g).tolist()]
    offset = float(torch.rand((), generator=g, dtype=torch.float64))
    # unit i is chosen iff the running count ⌊i·f + offset⌋ steps up at it
    return [
        unit
        for i, unit in enumerate(ordered)
        if math.floor((i + 1) * fraction + offset) > math.floor(i * fraction + offset)
    ]


def _mix(*values: int) -> int:
    """A seed for (seed, experience) that does not depend on any random generator's history."""
    h = 1469598103934665603
    for v in values:
        h = ((h ^ (v & 0xFFFFFFFF)) * 1099511628211) % (1 << 63)
    return h
