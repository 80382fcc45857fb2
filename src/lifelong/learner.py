"""The training loop: one file, read top to bottom.

    for each experience i (from where a previous run stopped):
        fresh optimizer (unless train.reset_optimizer is off); methods' `start`
        training data = the experience's train split, passed through the methods' `data`
        for each epoch, for each mini-batch (a seeded permutation of the data):
            batch through the methods' `batch`; forward; objective loss + the methods' `loss` terms
            backward; the methods' `after_backward`; LR schedule; optimizer step
            every `eval_every` steps: evaluate on every test set (stability gap)
            every `checkpoint_every` steps: checkpoint
        methods' `end`; evaluate on every experience's test set -> row i of the matrix; checkpoint

The state after any step is fully described by the model, optimizer, methods' state, the torch RNG and the
position (experience, epoch, batch): that is what a checkpoint holds, and why a killed run resumes to the
same weights as one that was never stopped.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lifelong import state as st
from lifelong.errors import StateError, TrainingDivergedError
from lifelong.evaluation import metrics
from lifelong.methods.base import Context, Method, check_composition, overrides
from lifelong.objectives import objective_for
from lifelong.progress import TrainingProgress
from lifelong.streams.experience import Split, Stream
from lifelong.training import TrainConfig
from lifelong.validation import check_stream_fits_model
from lifelong.version import __version__


@dataclass
class Results:
    """What a run produced; `to_dict()` is the content of results.json."""

    metric: str
    matrix: list[list[float]]
    initial: list[float]
    summary: dict[str, float | None]
    stability_gap: list[dict[str, Any]] | None
    config: dict[str, Any]
    seed: int
    wall_seconds: float
    experience_names: list[str] = field(default_factory=list)
    experience_start_steps: list[int] = field(default_factory=list)
    method: str = ""

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Results:
        """The inverse of `to_dict` (e.g. results.json read back)."""
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})

    def to_dict(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "matrix": self.matrix,
            "initial": self.initial,
            "summary": self.summary,
            "stability_gap": self.stability_gap,
            "config": self.config,
            "seed": self.seed,
            "wall_seconds": self.wall_seconds,
            "lifelong_version": __version__,
            "method": self.method,
            "experience_names": self.experience_names,
            "experience_start_steps": self.experience_start_steps,
        }


class Learner:
    """Trains `model` on a stream with `methods`, evaluating after every experience.

    >>> learner = Learner(MLP((1, 28, 28), 10), [Replay(500)], epochs=1, lr=0.01, run_dir="runs/er")
    >>> results = learner.run(stream)          # results.matrix[i][j], results.summary["acc"]

    `train` (or keyword arguments) sets the optimisation (see `TrainConfig`). With `run_dir` the run is
    checkpointed there and can be resumed with `run(stream, resume=True)`; without it nothing is written.
    """

    def __init__(
        self,
        model: nn.Module,
        methods: Sequence[Method] = (),
        train: TrainConfig | None = None,
        *,
        objective: Any = None,
        run_dir: str | Path | None = None,
        seed: int = 0,
        progress: bool = True,
        config: dict[str, Any] | None = None,
        **train_options: Any,
    ) -> None:
        if train is not None and train_options:
            raise TypeError("pass either train=TrainConfig(...) or keyword options, not both")
        self.train = train if train is not None else TrainConfig(**train_options)
        self.model = model
        self.methods = list(methods) or []
        check_composition(self.methods)  # e.g. two methods that both replace the loss: refuse now
        self.objective = objective
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.seed = seed
        self.show_progress = progress
        self._config = config
        self.optimizer: torch.optim.Optimizer | None = None

    # --- public -----------------------------------------------------------------------------------------

    def run(self, stream: Stream, resume: bool = False) -> Results:
        """Train on every experience of `stream` (continuing a checkpointed run if `resume`)."""
        objective = self.objective or objective_for(stream)
        self.objective = objective
        check_stream_fits_model(stream, self.model, objective)
        for method in self.methods:
            method.check(stream, objective, self.methods)
        config = self.config(stream)
        for method in self.methods:
            if overrides(method, "setup"):
                # e.g. adapters: the model's structure must match the checkpoint. Before the run directory
                # is touched, so a model the method cannot work with fails with nothing written.
                method.setup(self.model)
        checkpoint = self._prepare_run_dir(config, resume)  # raises before anything is written
        if checkpoint is not None and self.run_dir is not None:  # a checkpoint that does not fit fails here
            st.restore(checkpoint, model=self.model, optimizer=None, methods=self.methods)
            # a run killed after LATEST.json moved on may have left the previous checkpoint behind
            st.remove_stale_checkpoints(self.run_dir, keep=checkpoint["path"].name)
        self.model.to(self.train.device)
        self.optimizer = None  # a run never inherits optimizer state from an earlier `run` call
        torch.manual_seed(self.seed)
        return self._loop(stream, objective, config, checkpoint)

    def config(self, stream: Stream) -> dict[str, Any]:
        """What identifies this run: the given config, or a description of the objects."""
        if self._config is not None:
            return self._config
        return {
            "stream": {
                "name": stream.name,
                "kind": stream.kind,
                "experiences": len(stream),
                "num_classes": stream.num_classes,
                "input_shape": list(stream.input_shape),
                "train_sizes": [len(e.train) for e in stream],
            },
            "model": {
                "class": type(self.model).__name__,
                "parameters": sum(p.numel() for p in self.model.parameters()),
            },
            "method": [{"name": m.name, **m.params()} for m in self.methods] or [{"name": "naive"}],
            "train": self.train.model_dump(),
            "seed": self.seed,
        }

    # --- the loop ---------------------------------------------------------------------------------------

    def _loop(self, stream: Stream, objective: Any, config: dict, checkpoint: dict | None) -> Results:
        train, model, methods = self.train, self.model, self.methods
        # only the hooks a method overrides are called: a hook that does nothing costs nothing
        start_hooks = [m.start for m in methods if overrides(m, "start")]
        data_hooks = [m.data for m in methods if overrides(m, "data")]
        batch_hooks = [m.batch for m in methods if overrides(m, "batch")]
        loss_hooks = [m.loss for m in methods if overrides(m, "loss")]
        grad_hooks = [m.after_backward for m in methods if overrides(m, "after_backward")]
        end_hooks = [m.end for m in methods if overrides(m, "end")]
        main_loss = next((m.main_loss for m in methods if overrides(m, "main_loss")), None)
        evaluate = self._evaluator(stream, objective)

        p: dict[str, Any]
        if checkpoint is None:
            p = {
                "experience": 0,
                "epoch": 0,
                "batch": 0,
                "step": 0,
                "matrix": [],
                "evals": [],
                "start_steps": [],
                "wall_seconds": 0.0,
                "events_bytes": 0,
            }
            self._truncate_events(0)
            p["initial"] = evaluate()  # the untrained reference for forward transfer
            self._event({"event": "start", "step": 0, "seed": self.seed, "config": config})
        else:
            p = checkpoint["progress"]
            self._truncate_events(p["events_bytes"])
            self._event({"event": "resume", "step": p["step"], "experience": p["experience"]})
        began = time.perf_counter() - p["wall_seconds"]
        step = p["step"]
        epochs = 1 if stream.single_pass else train.epochs
        device = train.device
        bar = TrainingProgress(enabled=self.show_progress)

        with bar:
            for i in range(p["experience"], len(stream)):
                experience = stream[i]
                resuming = checkpoint is not None and i == p["experience"] and (p["epoch"] or p["batch"])
                if self.optimizer is None or (train.reset_optimizer and not resuming):
                    self.optimizer = self._make_optimizer()
                if checkpoint is not None and i == p["experience"]:
                    # at an experience boundary a reset optimizer starts fresh, as it would have unbroken
                    keep = resuming or not train.reset_optimizer
                    st.restore(
                        checkpoint, model=model, optimizer=self.optimizer if keep else None, methods=methods
                    )
                    torch.set_rng_state(checkpoint["rng"]["torch"])
                optimizer = self.optimizer
                seen = list(stream.experiences[: i + 1])
                ctx = Context(model, objective, optimizer, experience, i, seen, step=step)
                if not resuming:
                    p["start_steps"].append(step)
                    for start in start_hooks:
                        start(ctx)
                data = experience.train
                for select_data in data_hooks:
                    data = select_data(ctx, data)
                n, bs = len(data), train.batch_size
                n_batches = math.ceil(n / bs)
                total_steps = epochs * n_batches
                first_epoch, first_batch = (p["epoch"], p["batch"]) if resuming else (0, 0)
                bar.start_experience(i, len(stream), total_steps, first_epoch * n_batches + first_batch)
                model.train()
                loss = None  # stays None when a resumed experience has no step left to take

                for epoch in range(first_epoch, epochs):
                    ctx.epoch = epoch
                    order = torch.randperm(
                        n, generator=torch.Generator().manual_seed(_mix(self.seed, i, epoch))
                    )
                    for b in range(first_batch if epoch == first_epoch else 0, n_batches):
                        idx = order[b * bs : (b + 1) * bs]
                        batch = Split(data.x[idx], data.y[idx], None if data.t is None else data.t[idx])
                        ctx.step = step
                        for change_batch in batch_hooks:
                            batch = change_batch(ctx, batch)
                        t = None if batch.t is None else batch.t.to(device)
                        out = objective.forward(model, batch.x.to(device), t)
                        if main_loss is None:
                            loss = objective.loss(out, batch.y.to(device))
                        else:
                            loss = main_loss(ctx, batch, out)
                        for extra_loss in loss_hooks:
                            extra = extra_loss(ctx, batch, out)
                            if extra is not None:
                                loss = loss + extra
                        optimizer.zero_grad(set_to_none=True)
                        loss.backward()
                        for touch_grads in grad_hooks:
                            touch_grads(ctx)
                        if train.grad_clip is not None:
                            nn.utils.clip_grad_norm_(model.parameters(), train.grad_clip)
                        if train.scheduler != "constant" or train.warmup_steps:
                            self._set_lr(optimizer, epoch * n_batches + b, total_steps)
                        optimizer.step()
                        step += 1
                        bar.advance(step)
                        if train.eval_every and step % train.eval_every == 0:
                            values = evaluate()
                            p["evals"].append({"step": step, "experience": i, "values": values})
                            self._event(
                                {
                                    "event": "eval",
                                    "step": step,
                                    "experience": i,
                                    "epoch": epoch,
                                    "values": values,
                                }
                            )
                        if train.checkpoint_every and step % train.checkpoint_every == 0:
                            _check_finite(loss, step, i)  # never checkpoint a diverged model
                            nxt = (epoch, b + 1) if b + 1 < n_batches else (epoch + 1, 0)
                            p.update(experience=i, epoch=nxt[0], batch=nxt[1], step=step)
                            self._checkpoint(p, began, f"step-{step:09d}")

                _check_finite(loss, step, i)
                ctx.step = step
                for finish in end_hooks:
                    finish(ctx)
                row = evaluate()
                p["matrix"].append(row)
                self._event({"event": "experience_end", "step": step, "experience": i, "row": row})
                bar.end_experience(i, objective.metric, row[: i + 1])
                p.update(experience=i + 1, epoch=0, batch=0, step=step)
                self._checkpoint(p, began, f"exp-{i + 1:04d}")
                checkpoint = None

        results = Results(
            metric=objective.metric,
            matrix=p["matrix"],
            initial=p["initial"],
            summary=metrics.summary(p["matrix"], p["initial"], objective.higher_is_better),
            stability_gap=metrics.stability_gap(
                p["evals"], p["matrix"], p["start_steps"], objective.higher_is_better
            ),
            config=config,
            seed=self.seed,
            wall_seconds=time.perf_counter() - began,
            experience_names=[_describe(e) for e in stream],
            experience_start_steps=p["start_steps"],
            method="+".join(m.name for m in methods) or "naive",
        )
        if self.run_dir is not None:
            st.atomic_write_json(self.run_dir / "results.json", results.to_dict())
        return results

    # --- helpers ----------------------------------------------------------------------------------------

    def _evaluator(self, stream: Stream, objective: Any):
        batch_size = self.train.eval_batch_size
        predict_hooks = [m.predict for m in self.methods if overrides(m, "predict")]
        scored = _Predicting(self.model, predict_hooks) if predict_hooks else self.model

        def evaluate() -> list[float]:
            return [objective.evaluate(scored, s, batch_size) for s in stream.test_sets]

        return evaluate

    def _make_optimizer(self) -> torch.optim.Optimizer:
        tr = self.train
        params = [p for p in self.model.parameters() if p.requires_grad]
        if tr.optimizer == "sgd":
            return torch.optim.SGD(params, lr=tr.lr, momentum=tr.momentum, weight_decay=tr.weight_decay)
        if tr.optimizer == "adam":
            return torch.optim.Adam(params, lr=tr.lr, weight_decay=tr.weight_decay)
        return torch.optim.AdamW(params, lr=tr.lr, weight_decay=tr.weight_decay)

    def _set_lr(self, optimizer: torch.optim.Optimizer, local_step: int, total: int) -> None:
        """LR at `local_step` of this experience: linear warm-up, then constant, cosine or linear decay.
        A pure function of the position, so resuming needs no scheduler object."""
        tr = self.train
        if local_step < tr.warmup_steps:
            factor = (local_step + 1) / tr.warmup_steps
        else:
            progress = (local_step - tr.warmup_steps) / max(1, total - tr.warmup_steps)
            if tr.scheduler == "cosine":
                factor = 0.5 * (1.0 + math.cos(math.pi * progress))
            elif tr.scheduler == "linear":
                factor = 1.0 - progress
            else:
                factor = 1.0
        for group in optimizer.param_groups:
            group["lr"] = tr.lr * factor

    def _prepare_run_dir(self, config: dict, resume: bool) -> dict | None:
        """Check the run directory and return the checkpoint to resume from (or None). Writes only once
        every check has passed."""
        if self.run_dir is None:
            if resume:
                raise StateError("resume=True needs a run_dir to resume from")
            return None
        run_dir = self.run_dir
        config_path = run_dir / "config.json"
        if config_path.exists():
            saved = st.read_json(config_path, "run config")
            # compare in the normal form of a config read back from disk
            diff = _first_difference(saved, json.loads(json.dumps(config)))
            if diff is not None:
                raise StateError(
                    f"run directory {run_dir} belongs to another config ({diff}); choose another output "
                    f"directory, or resume that run with `lifelong resume {run_dir}`"
                )
            if (run_dir / "results.json").exists():
                raise StateError(
                    f"run directory {run_dir} holds a finished run; read {run_dir / 'results.json'}, "
                    f"or choose another output directory"
                )
            if not resume:
                raise StateError(
                    f"run directory {run_dir} holds an unfinished run of this config; continue it with "
                    f"`lifelong resume {run_dir}` (Learner.run(stream, resume=True)) or choose another "
                    "directory"
                )
            return st.read_checkpoint(run_dir) if st.has_checkpoint(run_dir) else None
        # a run killed while writing config.json leaves only that file's temporary copy: still empty
        leftovers = sorted(run_dir.glob(".config.json.*.tmp")) if run_dir.exists() else []
        if run_dir.exists() and any(p not in leftovers for p in run_dir.iterdir()):
            raise StateError(
                f"{run_dir} exists and is not a lifelong run directory (no config.json); choose an empty "
                "or new output directory"
            )
        if resume:
            raise StateError(f"nothing to resume in {run_dir}: it holds no run")
        for leftover in leftovers:
            leftover.unlink()
        run_dir.mkdir(parents=True, exist_ok=True)
        st.atomic_write_json(config_path, config)
        return None

    def _checkpoint(self, p: dict, began: float, name: str) -> None:
        if self.run_dir is None:
            return
        p["wall_seconds"] = time.perf_counter() - began
        p["events_bytes"] = self._events_size()
        st.save_checkpoint(
            self.run_dir,
            model=self.model,
            optimizer=self.optimizer,
            methods=self.methods,
            progress=p,
            rng={"torch": torch.get_rng_state()},
            name=name,
        )
        self._event({"event": "checkpoint", "step": p["step"], "name": name})

    def _events_path(self) -> Path | None:
        return None if self.run_dir is None else self.run_dir / "events.jsonl"

    def _events_size(self) -> int:
        path = self._events_path()
        return path.stat().st_size if path is not None and path.exists() else 0

    def _truncate_events(self, size: int) -> None:
        # events written after the checkpoint we resume from are replayed, so drop them first
        path = self._events_path()
        if path is None:
            return
        with open(path, "ab") as f:
            f.truncate(size)
            os.fsync(f.fileno())

    def _event(self, event: dict) -> None:
        path = self._events_path()
        if path is None:
            return
        with open(path, "a") as f:
            f.write(json.dumps(event, sort_keys=True) + "\n")


class _Predicting(nn.Module):
    """The model as evaluation sees it when a method decides the predictions (e.g. nearest mean)."""

    def __init__(self, model: nn.Module, hooks: list[Any]) -> None:
        super().__init__()
        self.model = model
        self.hooks = hooks

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        for predict in self.hooks:
            out = predict(self.model, x, out)
        return out


def _check_finite(loss: torch.Tensor | None, step: int, experience: int) -> None:
    # checked at checkpoints and experience ends, not every step: a per-step check would sync a GPU
    if loss is not None and not bool(torch.isfinite(loss.detach())):
        raise TrainingDivergedError(
            f"training diverged: the loss is {float(loss.detach()):g} at step {step} "
            f"(experience {experience}); "
            "lower train.lr, or set train.grad_clip. The last checkpoint before this point is kept."
        )


def _mix(*values: int) -> int:
    """A seed for the data order of (seed, experience, epoch) that does not depend on the RNG's history."""
    h = 1469598103934665603
    for v in values:
        h = ((h ^ (v & 0xFFFFFFFF)) * 1099511628211) % (1 << 63)
    return h


def _describe(e: Any) -> str:
    if e.classes is not None and e.domain is None:
        return f"{e.id}: classes {e.classes}"
    return f"{e.id}: {e.domain}" if e.domain is not None else str(e.id)


def _first_difference(a: Any, b: Any, path: str = "") -> str | None:
    """Where two JSON configs differ, as 'key x.y is A there and B here'."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            sub = f"{path}.{key}" if path else key
            if key not in a or key not in b:
                return (
                    f"key {sub!r} is {'missing' if key not in a else a[key]!r} there and "
                    f"{'missing' if key not in b else b[key]!r} here"
                )
            diff = _first_difference(a[key], b[key], sub)
            if diff:
                return diff
        return None
    if a != b:
        return f"key {path!r} is {a!r} there and {b!r} here"
    return None
