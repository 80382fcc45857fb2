"""Elastic Weight Consolidation (EWC) and online EWC.

EWC: Kirkpatrick, Pascanu, Rabinowitz, Veness, Desjardins, Rusu, Milan, Quan, Ramalho, Grabska-Barwinska,
Hassabis, Clopath, Kumaran and Hadsell (PNAS 2017), "Overcoming catastrophic forgetting in neural networks".
Online EWC: Schwarz, Luketina, Czarnecki, Grabska-Barwinska, Teh, Pascanu and Hadsell (ICML 2018),
"Progress & Compress: A scalable framework for continual learning".

At the end of each experience the diagonal of the Fisher information F_k is estimated on (a sample of) its
training data, and the weights theta*_k are stored; later experiences pay
    EWC:        strength/2 * sum_k sum_i F_k,i (theta_i - theta*_k,i)^2     (one term per past experience)
    online EWC: strength/2 * sum_i gamma F_i (theta_i - theta*_i)^2,  F <- gamma F + F_new, theta* the latest.

Choices. The Fisher is the "true" Fisher with the model's predicted label: the squared gradient of
-log p(argmax p(.|x) | x) for each sample, as van de Ven et al.'s `continual-learning` code does (`pred`);
it needs no random label draw, so it is deterministic and cheap to resume. Per-sample gradients come from
`torch.func` (functional_call + vmap(grad)) in chunks sized to a memory budget, never a Python loop per
sample. Task-incremental streams go through the objective's masked forward (each sample's own head); a
language-modelling sample is a sequence whose loss is its mean token loss against the predicted tokens.
EWC keeps the sum over experiences in closed form, sum_k F_k (theta - theta*_k)^2 =
Fbar (theta - mu)^2 + C with Fbar = sum_k F_k, mu = sum_k F_k theta*_k / Fbar, so one step costs the same
after 2 or 200 experiences; C (a constant, it changes no gradient) keeps the loss value exact. Online EWC
multiplies the running Fisher by gamma in the penalty as Progress & Compress (and van de Ven's code) do.
`samples` training samples (a seeded random subset) are used per experience; the last experience of a
stream is not measured, since nothing would use it. Per-sample gradients are tried on two samples in
`setup`, so a model torch.func cannot handle is refused before anything trains. MAS shares this machinery
(`SampleImportance`, `per_sample_gradients`).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from lifelong.errors import ConfigError
from lifelong.methods.base import Context, Method
from lifelong.methods.penalty import check_strength, quadratic_penalty
from lifelong.methods.tensor_state import Tensors, from_state, placed, to_state, trainable
from lifelong.streams.experience import Split, Stream

DEFAULT_STRENGTH = 10.0

# per-sample gradients held at once: chunk * parameters * 4 bytes stays under this
_CHUNK_BYTES = 64 << 20
_MAX_CHUNK = 64


def subset(data: Split, samples: int | None, seed: int, index: int) -> Split:
    """At most `samples` rows of `data`, a random choice seeded by (seed, experience index)."""
    if samples is None or samples >= len(data):
        return data
    g = torch.Generator().manual_seed((seed * 1_000_003 + index * 7919) % (1 << 62))
    return data.subset(torch.randperm(len(data), generator=g)[:samples])


def per_sample_gradients(
    model: nn.Module,
    objective: Any,
    data: Split,
    score: Callable[[torch.Tensor], torch.Tensor],
    reduce: Callable[[torch.Tensor], torch.Tensor],
) -> Tensors:
    """`mean over samples of reduce(d score(out(x)) / d theta)` for every trainable weight theta, where
    `out(x)` is the objective's forward of one sample (masked to its task in task-incremental streams).

    Vectorised with torch.func: vmap(grad) over chunks of samples, with the model in eval mode (no dropout,
    batch-norm running statistics), so every sample's gradient is that of the model as it is."""
    weights = {name: p.detach() for name, p in trainable(model).items()}
    others = {name: p.detach() for name, p in model.named_parameters() if name not in weights}
    others.update(dict(model.named_buffers()))
    device = next(iter(weights.values())).device
    n_params = sum(p.numel() for p in weights.values())
    chunk = max(1, min(_MAX_CHUNK, _CHUNK_BYTES // (4 * n_params)))

    def one(params: Tensors, x: torch.Tensor, t: torch.Tensor | None) -> torch.Tensor:
        def forward(inp: torch.Tensor) -> torch.Tensor:
            return functional_call(model, (params, others), (inp,))

        out = objective.forward(forward, x.unsqueeze(0), None if t is None else t.unsqueeze(0))
        return score(out)

    def one_untasked(params: Tensors, x: torch.Tensor) -> torch.Tensor:
        return one(params, x, None)

    per_sample: Callable[..., Tensors]
    if data.t is None:
        per_sample = vmap(grad(one_untasked), in_dims=(None, 0))
    else:
        per_sample = vmap(grad(one), in_dims=(None, 0, 0))
    total = {name: torch.zeros_like(p) for name, p in weights.items()}
    was_training = model.training
    model.eval()
    try:
        with warnings.catch_warnings():
            # some kernels (e.g. CPU flash attention) have no batching rule: slower, still correct
            warnings.filterwarnings(
                "ignore", message=".*performance drop because we have not yet implemented"
            )
            for i in range(0, len(data), chunk):
                x = data.x[i : i + chunk].to(device)
                if data.t is None:
                    grads = per_sample(weights, x)
                else:
                    grads = per_sample(weights, x, data.t[i : i + chunk].to(device))
                for name, g in grads.items():
                    total[name] += reduce(g).sum(dim=0)
    finally:
        model.train(was_training)
    return {name: value / len(data) for name, value in total.items()}


def predicted_label_nll(objective: Any) -> Callable[[torch.Tensor], torch.Tensor]:
    """The loss of one sample's outputs against the model's own prediction (the "true" Fisher's label)."""

    def score(out: torch.Tensor) -> torch.Tensor:
        return objective.loss(out, out.detach().argmax(dim=-1))

    return score


def merged(old: Tensors | None, new: Tensors, decay: float = 1.0) -> Tensors:
    """decay * old + new, by weight name; a weight only one of them has counts as 0 in the other (a weight
    frozen in an experience keeps its decayed importance, one that trains for the first time gets some)."""
    if old is None:
        return new
    placed(old, next(iter(new.values())).device)
    out = {name: decay * value for name, value in old.items()}
    for name, value in new.items():
        out[name] = out[name] + value if name in out else value
    return out


def weights_of(model: nn.Module, names: Tensors) -> Tensors:
    """A detached copy of the model's weights named in `names`."""
    params = dict(model.named_parameters())
    return {name: params[name].detach().clone() for name in names}


def probe(name: str, model: nn.Module, objective: Any, sample: Split) -> None:
    """Raise `ConfigError` now, before anything trains, if per-sample gradients of `model` cannot be taken
    (e.g. a forward pass with in-place updates or data-dependent Python control flow)."""
    try:
        per_sample_gradients(model, objective, sample, predicted_label_nll(objective), torch.square)
    except Exception as e:  # whatever torch.func refuses, the user needs the same advice
        raise ConfigError(
            f"method {name!r} needs per-sample gradients (torch.func vmap over the model), which failed "
            f"on {type(model).__name__}: {type(e).__name__}: {e}. Use a model without in-place or "
            "data-dependent operations in its forward pass, or a regulariser without per-sample gradients "
            "('si', 'l2')"
        ) from e


def fisher_diagonal(model: nn.Module, objective: Any, data: Split) -> Tensors:
    """The diagonal of the Fisher information of `model` on `data` (predicted labels), by weight name."""
    return per_sample_gradients(model, objective, data, predicted_label_nll(objective), torch.square)


class SampleImportance(Method):
    """What EWC, online EWC and MAS share: importances measured on `samples` training samples at the end of
    each experience (not the last one of the stream: nothing would use it), with per-sample gradients that
    are tried on two samples in `setup`, so a model torch.func cannot handle fails before anything trains."""

    def __init__(self, strength: float, samples: int | None, seed: int) -> None:
        check_strength(self.name, strength)
        if samples is not None and samples < 1:
            raise ConfigError(f"{self.name} samples must be at least 1 (or None for all), got {samples}")
        self.strength, self.samples, self.seed = strength, samples, seed
        self.experiences: int | None = None  # the stream's length, from `check`
        self._probe: tuple[Any, Split] | None = None  # (objective, two samples) to try in `setup`

    def check(self, stream: Stream, objective: Any, methods: Sequence[Method]) -> None:
        self.experiences = len(stream)
        first = stream[0].train
        self._probe = (objective, first.subset(torch.arange(min(2, len(first)))))

    def setup(self, model: nn.Module) -> None:
        if self._probe is not None:
            probe(self.name, model, *self._probe)

    def measured(self, ctx: Context) -> bool:
        """Whether this experience's importance is measured (every one but the stream's last)."""
        return self.experiences is None or ctx.index < self.experiences - 1

    def data_sample(self, ctx: Context) -> Split:
        """The training samples the importance is measured on: a seeded random subset."""
        return subset(ctx.experience.train, self.samples, self.seed, ctx.index)


class EWC(SampleImportance):
    """Options: `strength` (lambda: the penalty is lambda/2 * sum_k F_k (theta - theta*_k)^2), `samples`
    (training samples of each experience the Fisher is estimated on; None: all of them), `seed` (which
    samples)."""

    name = "ewc"

    def __init__(self, strength: float = DEFAULT_STRENGTH, samples: int | None = 1000, seed: int = 0) -> None:
        super().__init__(strength, samples, seed)
        # sum_k F_k and sum_k F_k theta*_k, and sum_k sum_i F_k,i theta*_k,i^2 (float64) for the constant
        self.fisher_sum: Tensors | None = None
        self.weighted_sum: Tensors | None = None
        self.square_sum = 0.0
        self.count = 0  # experiences consolidated
        self._mean: Tensors = {}  # derived: mu = weighted_sum / fisher_sum
        self._constant = 0.0  # derived: C

    def params(self) -> dict[str, Any]:
        return {"strength": self.strength, "samples": self.samples}

    def fisher(self, ctx: Context) -> Tensors:
        """The diagonal Fisher of the model now, on (a sample of) the experience's training data."""
        return fisher_diagonal(ctx.model, ctx.objective, self.data_sample(ctx))

    def loss(self, ctx: Context, batch: Split, out: torch.Tensor) -> torch.Tensor | None:
        if self.fisher_sum is None or self.strength == 0:
            return None
        penalty = quadratic_penalty(ctx.model, self._mean, self.fisher_sum)
        return 0.5 * self.strength * (penalty + self._constant)

    def end(self, ctx: Context) -> None:
        if not self.measured(ctx):
            return
        fisher = self.fisher(ctx)
        params = dict(ctx.model.named_parameters())
        if self.fisher_sum is None or self.weighted_sum is None:
            self.fisher_sum, self.weighted_sum = {}, {}
        device = next(iter(fisher.values())).device
        placed(self.fisher_sum, device)
        placed(self.weighted_sum, device)
        for name, f in fisher.items():
            if name not in self.fisher_sum:  # a weight that trains for the first time (e.g. HFT)
                self.fisher_sum[name], self.weighted_sum[name] = torch.zeros_like(f), torch.zeros_like(f)
            anchor = params[name].detach()
            self.fisher_sum[name] += f
            self.weighted_sum[name] += f * anchor
            self.square_sum += float((f.double() * anchor.double().square()).sum())
        self.count += 1
        self._derive()

    def _derive(self) -> None:
        """mu and C from the stored sums (the same bits whether computed now or after a resume)."""
        assert self.fisher_sum is not None and self.weighted_sum is not None
        self._mean, within = {}, 0.0
        for name in sorted(self.fisher_sum):  # a fixed order: a restored state gives the same C
            f, w = self.fisher_sum[name], self.weighted_sum[name]
            mu = torch.where(f > 0, w / torch.where(f > 0, f, torch.ones_like(f)), torch.zeros_like(f))
            self._mean[name] = mu
            within += float((f.double() * mu.double().square()).sum())
        # sum_k F_k theta*_k^2 - Fbar mu^2 >= 0 up to rounding; it shifts the value, never a gradient
        self._constant = max(0.0, self.square_sum - within)

    def state_dict(self) -> dict[str, Any]:
        return {
            **to_state("fisher_sum", self.fisher_sum),
            **to_state("weighted_sum", self.weighted_sum),
            "square_sum": self.square_sum,
            "count": self.count,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.fisher_sum = from_state("fisher_sum", state)
        self.weighted_sum = from_state("weighted_sum", state)
        self.square_sum = float(state.get("square_sum", 0.0))
        self.count = int(state.get("count", 0))
        if self.fisher_sum is not None:
            self._derive()
        else:
            self._mean, self._constant = {}, 0.0


class OnlineEWC(SampleImportance):
    """Options: `strength` (lambda), `gamma` (decay of the running Fisher: F <- gamma F + F_new, and the
    penalty lambda/2 * gamma F (theta - theta*)^2 around the latest weights theta*), `samples` (training
    samples of each experience the Fisher is estimated on; None: all), `seed` (which samples)."""

    name = "online_ewc"

    def __init__(
        self,
        strength: float = DEFAULT_STRENGTH,
        gamma: float = 1.0,
        samples: int | None = 1000,
        seed: int = 0,
    ) -> None:
        super().__init__(strength, samples, seed)
        if not 0.0 < gamma <= 1.0:  # also refuses nan
            raise ConfigError(f"{self.name} gamma must be in (0, 1], got {gamma}")
        self.gamma = gamma
        self.fisher_running: Tensors | None = None  # F* = gamma F*_prev + F_new
        self.anchor: Tensors | None = None  # weights at the end of the previous experience

    def params(self) -> dict[str, Any]:
        return {"strength": self.strength, "gamma": self.gamma, "samples": self.samples}

    def fisher(self, ctx: Context) -> Tensors:
        """The diagonal Fisher of the model now, on (a sample of) the experience's training data."""
        return fisher_diagonal(ctx.model, ctx.objective, self.data_sample(ctx))

    def loss(self, ctx: Context, batch: Split, out: torch.Tensor) -> torch.Tensor | None:
        if self.fisher_running is None or self.anchor is None or self.strength == 0:
            return None
        return (
            0.5 * self.strength * self.gamma * quadratic_penalty(ctx.model, self.anchor, self.fisher_running)
        )

    def end(self, ctx: Context) -> None:
        if not self.measured(ctx):
            return
        self.fisher_running = merged(self.fisher_running, self.fisher(ctx), self.gamma)
        self.anchor = weights_of(ctx.model, self.fisher_running)

    def state_dict(self) -> dict[str, Any]:
        return {**to_state("fisher", self.fisher_running), **to_state("anchor", self.anchor)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.fisher_running = from_state("fisher", state)
        self.anchor = from_state("anchor", state)
