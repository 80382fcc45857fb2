"""Elastic Weight Consolidation (EWC) and online EWC.

EWC: Kirkpatrick, Pascanu, Rabinowitz, Veness, Desjardins, Rusu, Milan, Quan, Ramalho, Grabska-Barwinska,
Hassabis, Clopath, Kumaran and Hadsell (PNAS 2017), "Overcoming catastrophic forgetting in neural networks".
Online EWC: Schwarz, Luketina, Czarnecki, Grabska-Barwinska, Teh, Pascanu and Hadsell (ICML 2018),
"Progress & Compress: A scalable framework for continual learning".

At the end of each experience the diagonal of the Fisher information F_k is estimated on (a sample of) its
training data, and the weights theta*_k are stored; later experiences pay
    EWC:        strength/2 * sum_k sum_i F_k,i (theta_i - theta*_k,i)^2     (one term per past experience)
    online EWC: strength/2 * sum_i gamma F_i (theta_i - theta*_i)^2,  F <- gamma F + F_new, theta* the latest.

Choices. For classification the Fisher is the "true" Fisher with the model's predicted label: the squared
gradient of -log p(argmax p(.|x) | x) for each sample, as van de Ven et al.'s `continual-learning` code does
(`pred`); it needs no random label draw, so it is deterministic and cheap to resume. Per-sample gradients
come from `torch.func` (functional_call + vmap(grad)) in chunks sized to a memory budget, never a Python loop
per sample. Task-incremental streams go through the objective's masked forward (each sample's own head).

For language modelling a sample is a sequence and the Fisher is the true Fisher of the next-token
distributions, estimated with the target token SAMPLED from the model's own predictive distribution at
`fisher_tokens` random positions of each of `samples` sequences (all positions if None): per sequence, the
squared gradient of the summed log-likelihood of the sampled tokens, divided by the number of positions, so
F is per token, the unit of the training loss. Why sampled, not the true next tokens or the argmax:
- the empirical Fisher (true next tokens) is the squared gradient of the training loss, not the curvature
  of the model's distribution; it is biased wherever the model does not fit the data (Kunstner et al.,
  NeurIPS 2019, "Limitations of the empirical Fisher approximation"), i.e. exactly on a new domain;
- a next-token distribution is flat (high entropy) where a classifier's is peaked, so the argmax label
  stands for the expectation over the vocabulary much worse than it does for classes;
- with sampled targets each position's score has mean zero (E_y[d log p(y)] = 0) and positions are drawn
  independently given the input, so the cross terms of the squared sum over positions vanish in
  expectation: one backward pass per sequence gives an unbiased estimate of the sum of per-position
  Fishers, instead of one backward pass per token.
The draws come from a generator seeded by (seed, experience index): one uniform number per position
(inverse-CDF sampling on the model's device), so a resumed run draws the same tokens. Sequences are long
enough that a backward pass per sequence costs what a vectorised chunk would (for a real language model
the chunk is one sequence anyway), and Hugging Face models' attention-mask code cannot be vmapped: for
language modelling (EWC, online EWC and MAS) per-sequence gradients come from a loop of ordinary backward
passes (`torch.autograd.grad`, which leaves `.grad` alone), and no vmap probe is needed.

EWC keeps the sum over experiences in closed form, sum_k F_k (theta - theta*_k)^2 =
Fbar (theta - mu)^2 + C with Fbar = sum_k F_k, mu = sum_k F_k theta*_k / Fbar, so one step costs the same
after 2 or 200 experiences; C (a constant, it changes no gradient) keeps the loss value exact. Online EWC
multiplies the running Fisher by gamma in the penalty as Progress & Compress (and van de Ven's code) do.
`samples` training samples (a seeded random subset) are used per experience; the last experience of a
stream is not measured, since nothing would use it. Per-sample gradients are tried on two samples in
`setup` (classification), so a model torch.func cannot handle is refused before anything trains. Only
weights that train are measured, each tensor once (a tied output layer and embedding are one tensor). MAS
shares this machinery (`SampleImportance`, `per_sample_gradients`).

    >>> ewc = EWC(strength=10.0, samples=200, fisher_tokens=64)   # 200 sequences x 64 sampled positions
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from lifelong.errors import ConfigError
from lifelong.methods.base import Context, Method
from lifelong.methods.penalty import check_strength, quadratic_penalty
from lifelong.methods.tensor_state import Tensors, from_state, placed, to_state, trainable
from lifelong.objectives import LanguageModeling
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


def language_modelling(objective: Any) -> bool:
    """Whether `objective` trains next-token prediction (a sample is a sequence of tokens)."""
    return isinstance(objective, LanguageModeling)


def per_sample_gradients(
    model: nn.Module,
    objective: Any,
    data: Split,
    score: Callable[[torch.Tensor], torch.Tensor],
    reduce: Callable[[torch.Tensor], torch.Tensor],
    looped: bool | None = None,
) -> Tensors:
    """`mean over samples of reduce(d score(out(x)) / d theta)` for every trainable weight theta, where
    `out(x)` is the objective's forward of one sample (masked to its task in task-incremental streams).

    With the model in eval mode (no dropout, batch-norm running statistics), so every sample's gradient is
    that of the model as it is. Vectorised with torch.func (vmap(grad) over chunks of samples), or with
    `looped` (default: for language modelling, see the module docstring) one ordinary backward pass per
    sample; a looped `score` may draw random numbers (it sees the samples one by one, in order)."""
    weights = trainable(model)
    total = {name: torch.zeros_like(p) for name, p in weights.items()}
    if looped is None:
        looped = language_modelling(objective)
    was_training = model.training
    model.eval()
    try:
        chunks = (_looped if looped else _vectorised)(model, objective, data, score, weights)
        for grads in chunks:
            for name, g in grads.items():
                total[name] += reduce(g).sum(dim=0)
    finally:
        model.train(was_training)
    return {name: value / len(data) for name, value in total.items()}


def _looped(
    model: nn.Module,
    objective: Any,
    data: Split,
    score: Callable[[torch.Tensor], torch.Tensor],
    weights: dict[str, nn.Parameter],
) -> Iterator[Tensors]:
    """Each sample's gradients ([1, ...] per weight), from one forward and backward pass per sample."""
    params = list(weights.values())
    device = params[0].device
    for i in range(len(data)):
        t = None if data.t is None else data.t[i : i + 1].to(device)
        value = score(objective.forward(model, data.x[i : i + 1].to(device), t))
        grads = torch.autograd.grad(value, params, allow_unused=True)
        yield {
            name: (torch.zeros_like(p) if g is None else g).unsqueeze(0)
            for (name, p), g in zip(weights.items(), grads, strict=True)
        }


def _vectorised(
    model: nn.Module,
    objective: Any,
    data: Split,
    score: Callable[[torch.Tensor], torch.Tensor],
    weights: dict[str, nn.Parameter],
) -> Iterator[Tensors]:
    """The gradients of chunks of samples ([chunk, ...] per weight), with vmap(grad)."""
    detached = {name: p.detach() for name, p in weights.items()}
    others = {name: p.detach() for name, p in model.named_parameters() if name not in detached}
    others.update(dict(model.named_buffers()))
    device = next(iter(detached.values())).device
    n_params = sum(p.numel() for p in detached.values())
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
    with warnings.catch_warnings():
        # some kernels (e.g. CPU flash attention) have no batching rule: slower, still correct
        warnings.filterwarnings("ignore", message=".*performance drop because we have not yet implemented")
        for i in range(0, len(data), chunk):
            x = data.x[i : i + chunk].to(device)
            if data.t is None:
                yield per_sample(detached, x)
            else:
                yield per_sample(detached, x, data.t[i : i + chunk].to(device))


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


def sampled_token_nll(
    tokens: int | None, generator: torch.Generator
) -> Callable[[torch.Tensor], torch.Tensor]:
    """The score of one sequence's outputs [1, T, V] for the token-sampled Fisher: at `tokens` random
    positions (all T if None or more), a target drawn from the model's own next-token distribution there;
    the summed negative log-likelihood of those targets over sqrt(positions), so that the squared gradient is
    the per-token Fisher estimate. Draws from `generator` (CPU): call it on the samples one by one."""

    def score(out: torch.Tensor) -> torch.Tensor:
        logits = out[0]  # [T, V]
        length, vocab = logits.shape
        k = length if tokens is None else min(tokens, length)
        positions = torch.randperm(length, generator=generator)[:k].to(logits.device)
        uniform = torch.rand(k, 1, generator=generator).to(logits.device)
        chosen = logits.index_select(0, positions)
        with torch.no_grad():
            # inverse-CDF sampling: one uniform number per position (from the CPU generator, so a resumed
            # run draws the same); `right`: a token of probability 0 is never drawn
            cdf = chosen.detach().float().softmax(dim=-1).cumsum(dim=-1)
            target = torch.searchsorted(cdf, uniform * cdf[:, -1:], right=True).squeeze(1)
            target = target.clamp_(max=vocab - 1)
        return F.cross_entropy(chosen, target, reduction="sum") / math.sqrt(k)

    return score


def sampled_token_fisher(
    model: nn.Module, objective: Any, data: Split, tokens: int | None, generator: torch.Generator
) -> Tensors:
    """The diagonal Fisher of a language model on the sequences `data`, per token: the mean over sequences of
    the squared gradient of `sampled_token_nll` (see the module docstring), one backward pass per sequence."""
    score = sampled_token_nll(tokens, generator)
    return per_sample_gradients(model, objective, data, score, torch.square, looped=True)


def ewc_fisher(ctx: Context, data: Split, tokens: int | None, seed: int) -> Tensors:
    """EWC's Fisher of the model now on `data`: with predicted labels (classification), or token-sampled
    (language modelling) from a generator seeded by (seed, experience index)."""
    if not language_modelling(ctx.objective):
        return fisher_diagonal(ctx.model, ctx.objective, data)
    generator = torch.Generator().manual_seed((seed * 1_000_003 + ctx.index * 7919 + 17) % (1 << 62))
    return sampled_token_fisher(ctx.model, ctx.objective, data, tokens, generator)


def check_tokens(name: str, tokens: int | None) -> None:
    if tokens is not None and (isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 1):
        raise ConfigError(
            f"{name} fisher_tokens must be a whole number of at least 1 (or None for every position), "
            f"got {tokens!r}"
        )


class SampleImportance(Method):
    """What EWC, online EWC and MAS share: importances measured on `samples` training samples at the end of
    each experience (not the last one of the stream: nothing would use it), with per-sample gradients that
    are tried on two samples in `setup`, so a model torch.func cannot handle fails before anything trains
    (classification only: language modelling takes them in a loop of backward passes, which every model
    that trains at all allows)."""

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
        self._probe = None
        if not language_modelling(objective):
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
    (training samples of each experience the Fisher is estimated on, sequences for language modelling;
    None: all of them), `fisher_tokens` (language modelling: positions per sequence at which a target token
    is sampled; None: every position), `seed` (which samples, positions and tokens)."""

    name = "ewc"

    def __init__(
        self,
        strength: float = DEFAULT_STRENGTH,
        samples: int | None = 1000,
        seed: int = 0,
        fisher_tokens: int | None = None,
    ) -> None:
        super().__init__(strength, samples, seed)
        check_tokens(self.name, fisher_tokens)
        self.fisher_tokens = fisher_tokens
        # sum_k F_k and sum_k F_k theta*_k, and sum_k sum_i F_k,i theta*_k,i^2 (float64) for the constant
        self.fisher_sum: Tensors | None = None
        self.weighted_sum: Tensors | None = None
        self.square_sum = 0.0
        self.count = 0  # experiences consolidated
        self._mean: Tensors = {}  # derived: mu = weighted_sum / fisher_sum
        self._constant = 0.0  # derived: C

    def params(self) -> dict[str, Any]:
        # fisher_tokens only when set: the recorded config of a run without it stays as it was
        tokens = {} if self.fisher_tokens is None else {"fisher_tokens": self.fisher_tokens}
        return {"strength": self.strength, "samples": self.samples, **tokens}

    def fisher(self, ctx: Context) -> Tensors:
        """The diagonal Fisher of the model now, on (a sample of) the experience's training data."""
        return ewc_fisher(ctx, self.data_sample(ctx), self.fisher_tokens, self.seed)

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
    samples of each experience the Fisher is estimated on; None: all), `fisher_tokens` (language
    modelling: sampled positions per sequence; None: all), `seed` (which samples, positions, tokens)."""

    name = "online_ewc"

    def __init__(
        self,
        strength: float = DEFAULT_STRENGTH,
        gamma: float = 1.0,
        samples: int | None = 1000,
        seed: int = 0,
        fisher_tokens: int | None = None,
    ) -> None:
        super().__init__(strength, samples, seed)
        if not 0.0 < gamma <= 1.0:  # also refuses nan
            raise ConfigError(f"{self.name} gamma must be in (0, 1], got {gamma}")
        check_tokens(self.name, fisher_tokens)
        self.gamma, self.fisher_tokens = gamma, fisher_tokens
        self.fisher_running: Tensors | None = None  # F* = gamma F*_prev + F_new
        self.anchor: Tensors | None = None  # weights at the end of the previous experience

    def params(self) -> dict[str, Any]:
        tokens = {} if self.fisher_tokens is None else {"fisher_tokens": self.fisher_tokens}
        return {"strength": self.strength, "gamma": self.gamma, "samples": self.samples, **tokens}

    def fisher(self, ctx: Context) -> Tensors:
        """The diagonal Fisher of the model now, on (a sample of) the experience's training data."""
        return ewc_fisher(ctx, self.data_sample(ctx), self.fisher_tokens, self.seed)

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
