"""Learning without Forgetting (LwF).

Li and Hoiem (ECCV 2016; TPAMI 2017), "Learning without Forgetting". When an experience begins (from the
second on), the model is frozen as a teacher; while the experience trains, the model's outputs for what it
knew before are distilled from the teacher's on the new inputs, with no old data stored:
    loss += strength * T^2 * KL(softmax(teacher / T) || softmax(student / T))   (mean over samples)

Which outputs: in a task-incremental stream (multi-head), each previous task's head, i.e. its classes'
logits, one KL per head, summed over the old heads as in the paper; in a class-incremental stream (one
head), the logits of every class seen before this experience, in one softmax; in a domain-incremental
stream (every class in every experience) all outputs; for language modelling the next-token distribution
at every position (averaged over positions), over every output row (a vocabulary padded beyond the
tokenizer's included: the student must not move probability mass there either).

Choices. The teacher's weights live in the state, so a resumed run distils from the same teacher; the
forward pass runs on a frozen copy of the model's modules built once per experience (eval mode, no
gradient) whose parameters are the stored tensors themselves, not copies of them: the teacher costs one
copy of the weights, also for a Hugging Face model of billions of them. A `torch.func.functional_call`
with the stored weights would need no copy of the modules but costs ~0.3 ms of parameter swapping per
step, 9 % of a step of an MLP 2x400 (bench/peers/avalanche.py, profiled).
T^2 keeps the gradient's scale independent of T (Hinton et al. 2015). In task-incremental streams the
loop's outputs are masked to each sample's own task, so the other heads' raw logits come from the same
forward pass, taken by a forward hook on the model (registered in `setup`); if that output is not the one
the loss sees, the student runs once more instead.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.hooks import RemovableHandle

from lifelong.errors import ConfigError
from lifelong.methods.base import Context, Method
from lifelong.methods.tensor_state import Tensors, from_state, placed, to_state
from lifelong.objectives import logits_of
from lifelong.streams.experience import Split, Stream


def distillation(
    student: torch.Tensor, teacher: torch.Tensor, temperature: float, groups: torch.Tensor | None = None
) -> torch.Tensor:
    """T^2 * KL(softmax(teacher/T) || softmax(student/T)) over the last dimension, mean over the other
    dimensions except `groups`: with `groups` (a [K, C] bool mask of K output groups, e.g. old task heads)
    one KL per group (a softmax over its outputs only), summed over the groups."""
    s, t = student / temperature, teacher / temperature
    if groups is None:
        log_s, log_t = F.log_softmax(s, dim=-1), F.log_softmax(t, dim=-1)
        kl = (log_t.exp() * (log_t - log_s)).sum(dim=-1)
    else:
        hidden = ~groups  # [K, C]: outputs outside each group
        log_s = F.log_softmax(s.unsqueeze(-2).masked_fill(hidden, float("-inf")), dim=-1)  # [..., K, C]
        log_t = F.log_softmax(t.unsqueeze(-2).masked_fill(hidden, float("-inf")), dim=-1)
        # outside a group both are -inf and p = 0: count 0 there, not 0 * nan
        terms = torch.where(groups, log_t.exp() * (log_t - log_s), torch.zeros_like(log_s))
        kl = terms.sum(dim=-1).sum(dim=-1)
    return temperature**2 * kl.mean()


class LwF(Method):
    """Options: `strength` (weight of the distillation term), `temperature` (T of the softened softmax)."""

    name = "lwf"

    def __init__(self, strength: float = 1.0, temperature: float = 2.0) -> None:
        if strength < 0:
            raise ConfigError(f"{self.name} strength must be at least 0, got {strength}")
        if not temperature > 0:
            raise ConfigError(f"{self.name} temperature must be greater than 0, got {temperature}")
        self.strength, self.temperature = strength, temperature
        self.teacher: Tensors | None = None  # the model's weights and buffers when the experience began
        self._multi_head = False  # the stream exposes task labels (from `check`)
        self._hook: RemovableHandle | None = None
        self._raw: torch.Tensor | None = None  # the model's last training output, before task masking
        self._teacher_model: nn.Module | None = None  # built from `teacher` when first needed

    def params(self) -> dict[str, Any]:
        return {"strength": self.strength, "temperature": self.temperature}

    def check(self, stream: Stream, objective: Any, methods: Sequence[Method]) -> None:
        self._multi_head = stream.task_classes is not None

    def setup(self, model: nn.Module) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        if self._multi_head:
            self._hook = model.register_forward_hook(self._capture)

    def _capture(self, module: nn.Module, args: Any, output: Any) -> None:
        if module.training and torch.is_grad_enabled() and isinstance(output, torch.Tensor):
            self._raw = output

    def start(self, ctx: Context) -> None:
        self._teacher_model = None
        if ctx.index == 0:
            self.teacher = None
            return
        model = ctx.model
        self.teacher = {name: p.detach().clone() for name, p in model.named_parameters()}
        self.teacher.update({name: b.detach().clone() for name, b in model.named_buffers()})

    def teacher_outputs(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """The teacher's raw outputs on `x` (eval mode, no gradient)."""
        assert self.teacher is not None
        if self._teacher_model is None:
            self._teacher_model = frozen_copy(model, placed(self.teacher, x.device))
        with torch.no_grad():
            return logits_of(self._teacher_model(x))

    def loss(self, ctx: Context, batch: Split, out: torch.Tensor) -> torch.Tensor | None:
        raw, self._raw = self._raw, None
        if self.teacher is None or self.strength == 0:
            return None
        x = batch.x.to(out.device)
        task_classes = getattr(ctx.objective, "task_classes", None)
        if ctx.experience.task is not None and task_classes:
            # multi-head: each old task's head, on the model's unmasked outputs
            old = sorted({int(e.task) for e in ctx.seen[:-1] if e.task is not None} - {ctx.experience.task})
            if not old:
                return None
            if raw is None or not _made(out, raw):
                raw = logits_of(ctx.model(x))
            groups = torch.zeros(len(old), out.shape[-1], dtype=torch.bool, device=out.device)
            for k, task in enumerate(old):
                groups[k, task_classes[task]] = True
            return self.strength * distillation(
                raw, self.teacher_outputs(ctx.model, x), self.temperature, groups
            )
        teacher = self.teacher_outputs(ctx.model, x)
        old_classes = sorted({c for e in ctx.seen[:-1] for c in (e.classes or [])})
        if old_classes and len(old_classes) < out.shape[-1]:
            # single head: the classes seen before this experience, in one softmax
            index = torch.tensor(old_classes, device=out.device)
            out, teacher = out.index_select(-1, index), teacher.index_select(-1, index)
        return self.strength * distillation(out, teacher, self.temperature)

    def end(self, ctx: Context) -> None:
        self._raw = None  # do not hold the last step's graph

    def state_dict(self) -> dict[str, Any]:
        return to_state("teacher", self.teacher)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.teacher = from_state("teacher", state)
        self._teacher_model = None


def frozen_copy(model: nn.Module, weights: Tensors) -> nn.Module:
    """A copy of `model` whose parameters and buffers ARE `weights` (shared, not copied: the teacher costs one
    copy of the model's weights, the one in the state), in eval mode, without gradients and without the
    model's hooks (a hook bound to a method object would drag that object into the copy).

    `copy.deepcopy` is handed a memo that maps each live tensor to its stored counterpart, so the copy
    never duplicates a weight, not even for a moment; tied weights stay tied (one tensor, one entry). A
    tokenizer carried by the model (`CausalLM.tokenizer`) is shared too: the teacher never tokenizes."""
    memo: dict[int, Any] = {}
    for name, p in model.named_parameters():  # each tensor once, under the name `start` stored it
        memo[id(p)] = nn.Parameter(weights[name], requires_grad=False)
    for name, b in model.named_buffers():
        memo[id(b)] = weights[name]
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is not None:
        memo[id(tokenizer)] = tokenizer
    hooks = model._forward_hooks, model._forward_pre_hooks
    model._forward_hooks, model._forward_pre_hooks = OrderedDict(), OrderedDict()
    try:
        teacher = copy.deepcopy(model, memo)
    finally:
        model._forward_hooks, model._forward_pre_hooks = hooks
    return teacher.eval().requires_grad_(False)


def _made(out: torch.Tensor, raw: torch.Tensor) -> bool:
    """True if `out` is `raw`, or was computed from it in one operation (the objective's task mask)."""
    if out is raw:
        return True
    fn = out.grad_fn
    return fn is not None and raw.grad_fn is not None and any(f is raw.grad_fn for f, _ in fn.next_functions)
