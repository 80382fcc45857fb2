"""Approximate unlearning: make one trained model behave as if it had not seen the forget set, in a few
hundred steps instead of a retraining. Nothing is guaranteed: `lifelong.unlearn.audit` measures how close
the result comes (the reference is a model retrained without the forget set).

- NegGrad+ (Kurmanji et al. 2023): gradient descent on the retain set and ascent on the forget set,
  `loss = CE(retain) - alpha * mean(min(CE_i(forget), forget_clip))`. Each forget sample's loss is clipped
  (default: log of the number of classes, a uniform guess's loss), so ascent stops for a sample once it is
  predicted no better than chance, and the loss cannot run off to infinity.
- SCRUB (Kurmanji et al. 2023): a teacher (the model before unlearning) and the student (the model). Max
  steps push the student away from the teacher on forget batches (maximise KL(teacher || student), clipped
  per sample at `forget_clip`), for the first `max_steps` steps; min steps keep it close on retain batches
  (minimise `alpha * KL + gamma * CE`). Temperature `temperature` softens both distributions (KL scaled
  by its square, as in distillation).

Both work on classifiers (`[B, classes]` logits) and language models (`kind="language_modeling"`: `[B, T,
vocabulary]` logits, token targets; losses are per sequence, the mean over its tokens).

    >>> report = unlearn(model, forget, retain, method="neggrad+", steps=200, lr=0.01)
    >>> report["seconds"], report["forget_loss_last"]
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lifelong.errors import ConfigError, DataError, TrainingDivergedError
from lifelong.objectives import ModelCall
from lifelong.streams.experience import Split
from lifelong.unlearn.audit import check_kind, sample_losses

METHODS = ("neggrad+", "scrub")
TRACE = 10  # steps averaged for the first/last losses reported


def unlearn(
    model: nn.Module,
    forget: Split,
    retain: Split,
    method: str = "neggrad+",
    steps: int = 100,
    lr: float = 0.01,
    batch_size: int = 64,
    seed: int = 0,
    kind: str = "classification",
    *,
    alpha: float = 1.0,
    forget_clip: float | None = None,
    gamma: float = 1.0,
    temperature: float = 4.0,
    max_steps: int | None = None,
    momentum: float = 0.9,
) -> dict[str, Any]:
    """Unlearn `forget` from `model` in place, keeping `retain`; returns what was done and the seconds taken.

    `alpha`: NegGrad+, the weight of the forget term; SCRUB, the weight of the retain KL term. `forget_clip`:
    the per-sample cap of the forget term (default log(classes)). `gamma`, `temperature`, `max_steps`
    (default: half the steps): SCRUB only. SGD with `momentum`; batches drawn from seeded permutations, so
    the same seed gives the same model. A loss that turns non-finite restores the model and raises."""
    _check(model, forget, retain, method, steps, lr, batch_size, kind, alpha, forget_clip, gamma, temperature)
    if max_steps is None:
        max_steps = steps // 2
    if max_steps < 0:
        raise ConfigError(f"max_steps must be >= 0, got {max_steps}")
    began = time.perf_counter()
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ConfigError("the model has no trainable parameter (requires_grad=False everywhere)")
    saved = {k: v.detach().clone() for k, v in model.state_dict().items()}  # restored if the loss diverges
    teacher = None
    if method == "scrub":
        teacher = copy.deepcopy(model).eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
    optimizer = torch.optim.SGD(params, lr=lr, momentum=momentum)
    g = torch.Generator().manual_seed(seed)
    forget_batches, retain_batches = _batches(forget, batch_size, g), _batches(retain, batch_size, g)
    call = ModelCall()
    device = next(iter(params)).device
    forget_trace: list[float] = []
    retain_trace: list[float] = []
    clip = forget_clip
    was_training = model.training
    model.train()
    try:
        for step in range(steps):
            if method == "neggrad+":
                rb, fb = next(retain_batches), next(forget_batches)
                r_out = _forward(call, model, rb, device)
                f_out = _forward(call, model, fb, device)
                if clip is None:
                    clip = math.log(int(f_out.shape[-1]))
                r_loss = sample_losses(r_out, rb.y.to(device), kind).mean()
                f_loss = sample_losses(f_out, fb.y.to(device), kind)
                loss = r_loss - alpha * f_loss.clamp(max=clip).mean()
                _step(optimizer, loss, model, saved, step)
                forget_trace.append(float(f_loss.detach().mean()))
                retain_trace.append(float(r_loss.detach()))
                continue
            assert teacher is not None
            if step < max_steps:  # max step: away from the teacher on the forget set
                fb = next(forget_batches)
                f_out = _forward(call, model, fb, device)
                if clip is None:
                    clip = math.log(int(f_out.shape[-1]))
                with torch.no_grad():
                    f_teacher = _forward(call, teacher, fb, device)
                kl = _kl(f_teacher, f_out, temperature)
                _step(optimizer, -kl.clamp(max=clip).mean(), model, saved, step)
                forget_trace.append(float(kl.detach().mean()))
            rb = next(retain_batches)  # min step: close to the teacher, and right, on the retain set
            r_out = _forward(call, model, rb, device)
            with torch.no_grad():
                r_teacher = _forward(call, teacher, rb, device)
            r_loss = sample_losses(r_out, rb.y.to(device), kind).mean()
            loss = alpha * _kl(r_teacher, r_out, temperature).mean() + gamma * r_loss
            _step(optimizer, loss, model, saved, step)
            retain_trace.append(float(r_loss.detach()))
    finally:
        model.train(was_training)
    report: dict[str, Any] = {
        "method": method,
        "kind": kind,
        "steps": steps,
        "lr": lr,
        "batch_size": batch_size,
        "seed": seed,
        "alpha": alpha,
        "forget_clip": clip,
        "momentum": momentum,
        "forget_size": len(forget),
        "retain_size": len(retain),
        # NegGrad+: the forget set's cross-entropy; SCRUB: its KL to the teacher (max steps only)
        "forget_loss_first": _mean(forget_trace[:TRACE]),
        "forget_loss_last": _mean(forget_trace[-TRACE:]),
        "retain_loss_first": _mean(retain_trace[:TRACE]),
        "retain_loss_last": _mean(retain_trace[-TRACE:]),
        "seconds": round(time.perf_counter() - began, 3),
    }
    if method == "scrub":
        report.update(gamma=gamma, temperature=temperature, max_steps=min(max_steps, steps))
    return report


def _forward(call: ModelCall, model: nn.Module, batch: Split, device: torch.device) -> torch.Tensor:
    t = None if batch.t is None else batch.t.to(device)
    return call(model, batch.x.to(device), t).float()


def _kl(teacher: torch.Tensor, student: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(teacher || student) per sample (per sequence: the mean over its tokens), at `temperature`."""
    log_p = F.log_softmax(teacher / temperature, dim=-1)
    log_q = F.log_softmax(student / temperature, dim=-1)
    per_row = (log_p.exp() * (log_p - log_q)).sum(dim=-1) * temperature**2
    return per_row if per_row.dim() == 1 else per_row.mean(dim=1)


def _step(
    optimizer: torch.optim.Optimizer, loss: torch.Tensor, model: nn.Module, saved: dict, step: int
) -> None:
    if not bool(torch.isfinite(loss.detach())):
        model.load_state_dict(saved)
        raise TrainingDivergedError(
            f"unlearning diverged: the loss is {float(loss.detach()):g} at step {step + 1}; the model was "
            "restored to its state before unlearning. Lower lr (or alpha, or forget_clip)"
        )
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def _batches(split: Split, batch_size: int, g: torch.Generator) -> Iterator[Split]:
    """Mini-batches of `split` forever: a fresh seeded permutation every pass."""
    while True:
        order = torch.randperm(len(split), generator=g)
        for i in range(0, len(split), batch_size):
            yield split.subset(order[i : i + batch_size])


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _check(
    model: Any,
    forget: Any,
    retain: Any,
    method: str,
    steps: int,
    lr: float,
    batch_size: int,
    kind: str,
    alpha: float,
    forget_clip: float | None,
    gamma: float,
    temperature: float,
) -> None:
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if method not in METHODS:
        raise ConfigError(f"unknown unlearning method {method!r}; choose one of {', '.join(METHODS)}")
    check_kind(kind)
    for name, split in (("forget", forget), ("retain", retain)):
        if not isinstance(split, Split) or len(split) == 0:
            raise DataError(
                f"unlearn: `{name}` must be a non-empty Split (x, y); both the forget and the retain set are "
                "needed (the retain set keeps what should stay learnt)"
            )
    for name, value, low in (("steps", steps, 1), ("batch_size", batch_size, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ConfigError(f"{name} must be a whole number >= {low}, got {value!r}")
    for name, number in (("lr", lr), ("temperature", temperature)):
        if not number > 0:
            raise ConfigError(f"{name} must be > 0, got {number}")
    for name, number in (("alpha", alpha), ("gamma", gamma)):
        if not number >= 0:
            raise ConfigError(f"{name} must be >= 0, got {number}")
    if forget_clip is not None and not forget_clip > 0:
        raise ConfigError(
            f"forget_clip must be > 0 (or None: log of the number of classes), got {forget_clip}"
        )
