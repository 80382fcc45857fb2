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

import contextlib
import json
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError
from torch import nn

from lifelong import run_directory
from lifelong import state as st
from lifelong.errors import ConfigError, TrainingDivergedError
from lifelong.evaluation import metrics
from lifelong.evaluation.confusion import accuracy_of, confusion_matrix, per_class_accuracy
from lifelong.methods.base import Context, Method, check_composition, overrides
from lifelong.objectives import logits_of, objective_for
from lifelong.progress import TrainingProgress
from lifelong.schedules import HotWeights, lr_at
from lifelong.streams.experience import Split, Stream
from lifelong.streams.fingerprint import experience_name
from lifelong.training import TrainConfig
from lifelong.validation import check_stream_fits_model
from lifelong.version import __version__


@dataclass
class Results:
    """What a run produced; `to_dict()` is the content of results.json."""

    metric: str
    matrix: list[list[float | None]]
    initial: list[float | None]
    summary: dict[str, Any]
    stability_gap: list[dict[str, Any]] | None
    config: dict[str, Any]
    seed: int
    wall_seconds: float
    experience_names: list[str] = field(default_factory=list)
    experience_start_steps: list[int] = field(default_factory=list)
    method: str = ""
    label_names: list[Any] | None = None
    per_class_accuracy: list[list[float | None]] | None = None
    confusion: list[list[list[int]]] | None = None
    # language modelling: tokens trained on and speed per experience, the process's peak memory
    tokens_seen: list[int] | None = None
    tokens_per_second: list[float | None] | None = None
    peak_memory_bytes: int | None = None
    experience_steps: list[int] | None = None
    schedule: str | None = None
    # what methods measured per experience, by key (e.g. "pseudo_labels": precision, coverage, ECE)
    reports: dict[str, list[dict[str, Any]]] | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Results:
        """The inverse of `to_dict` (e.g. results.json read back)."""
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
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
        if self.label_names is not None:
            out["label_names"] = self.label_names
        if self.per_class_accuracy is not None:
            out["per_class_accuracy"] = self.per_class_accuracy
            out["confusion"] = self.confusion
        if self.tokens_seen is not None:
            out["tokens_seen"] = self.tokens_seen
            out["tokens_per_second"] = self.tokens_per_second
            out["peak_memory_bytes"] = self.peak_memory_bytes
            out["experience_steps"] = self.experience_steps
        if self.schedule is not None and self.tokens_seen is not None:  # language models: the LR figure
            out["schedule"] = self.schedule
        if self.reports:
            out["reports"] = self.reports
            for key, entries in self.reports.items():  # each also at the top level: results["pseudo_labels"]
                out.setdefault(key, entries)
        return out


class Learner:
    """Trains `model` on a stream with `methods`, evaluating after every experience.

    >>> lifelong.seed(0)                       # before building the model: fixed initial weights
    >>> learner = Learner(MLP((1, 28, 28), 10), [Replay(500)], epochs=1, lr=0.01, run_dir="runs/er")
    >>> results = learner.run(stream)          # results.matrix[i][j], results.summary["acc"]

    `train` (or keyword arguments) sets the optimisation (see `TrainConfig`). With `run_dir` the run is
    checkpointed there (and its report written); `run(stream, resume=True)` goes on after a crash,
    `run(longer_stream, extend=True)` trains a finished run on the experiences added at the end of its
    stream. Without `run_dir` nothing is written. `loggers` receive every event (TensorBoard, MLflow: see
    `lifelong.loggers`).
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
        loggers: Sequence[Any] = (),
        report: bool = True,
        **train_options: Any,
    ) -> None:
        if train is not None and train_options:
            raise TypeError("pass either train=TrainConfig(...) or keyword options, not both")
        try:
            self.train = train if train is not None else TrainConfig(**train_options)
        except ValidationError as err:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
            raise ConfigError(f"invalid training option: {problems}") from None
        if not isinstance(model, nn.Module):
            raise ConfigError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.model = model
        self.methods = list(methods) or []
        bad = [type(m).__name__ for m in self.methods if not isinstance(m, Method)]
        if bad:
            raise ConfigError(
                f"methods must be lifelong.methods.Method objects; got {bad} (subclass Method to write one)"
            )
        check_composition(self.methods)  # e.g. two methods that both replace the loss: refuse now
        if self.train.scheduler == "wsd" and self.train.continue_from == "hot":
            # part of the state, like any method's memory; first, so that the next experience's `start`
            # hooks see the hot weights
            self.methods.insert(0, HotWeights(self.train))
        self.objective = objective
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.seed = seed
        self.show_progress = progress
        self._config = config
        self.loggers = list(loggers)
        self.write_report = report
        self.optimizer: torch.optim.Optimizer | None = None

    # --- public -----------------------------------------------------------------------------------------

    def run(
        self, stream: Stream, resume: bool = False, *, extend: bool = False, overwrite: bool = False
    ) -> Results:
        """Train on every experience of `stream`.

        `resume`: continue the checkpointed run in `run_dir` (same stream, checked by fingerprint).
        `extend`: the run in `run_dir` has finished and `stream` is its stream with new experiences at the
        end: train on those from the final state (model, memories, method state), growing the matrix.
        `overwrite`: replace whatever run `run_dir` holds."""
        if sum((resume, extend, overwrite)) > 1:
            raise TypeError("resume, extend and overwrite exclude each other: pass at most one")
        objective = self.objective or objective_for(stream)
        self.objective = objective
        check_stream_fits_model(stream, self.model, objective)
        for method in self.methods:
            method.check(stream, objective, self.methods)
        config = self.config(stream)
        if self.train.gradient_checkpointing:  # a model without it fails here, with nothing written
            _enable_gradient_checkpointing(self.model)
        for method in self.methods:
            if overrides(method, "setup"):
                # e.g. adapters: the model's structure must match the checkpoint. Before the run directory
                # is touched, so a model the method cannot work with fails with nothing written.
                method.setup(self.model)
        mode = "extend" if extend else "resume" if resume else "new"
        origin = "python" if self._config is None else "config"
        checkpoint = run_directory.prepare(  # raises before anything is written
            self.run_dir,
            config=config,
            stream=stream,
            model=self.model,
            origin=origin,
            mode=mode,
            overwrite=overwrite,
        )
        if checkpoint is not None and self.run_dir is not None:  # a checkpoint that does not fit fails here
            st.restore(checkpoint, model=self.model, optimizer=None, methods=self.methods)
            # a run killed after LATEST.json moved on may have left the previous checkpoint behind
            st.remove_stale_checkpoints(self.run_dir, keep=checkpoint["path"].name)
        self.model.to(self.train.device)
        self.optimizer = None  # a run never inherits optimizer state from an earlier `run` call
        _warm_up()
        torch.manual_seed(self.seed)
        try:
            results = self._loop(stream, objective, config, checkpoint)
        finally:
            for logger in self.loggers:
                logger.close()
        if self.run_dir is not None and self.write_report:
            from lifelong.evaluation.report import write_report

            write_report(self.run_dir, plots=False)  # the page; `lifelong report` also draws PNGs
        return results

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
            "method": [{"name": m.name, **m.params()} for m in self._user_methods()] or [{"name": "naive"}],
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
        reporters = [m for m in methods if overrides(m, "report")]
        main_loss = next((m.main_loss for m in methods if overrides(m, "main_loss")), None)
        evaluate, evaluate_end = self._evaluators(stream, objective)
        classifying = stream.kind == "classification"

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
            if not classifying:
                p["tokens"], p["tokens_seen"], p["train_seconds"], p["experience_steps"] = 0, [], [], []
            if classifying:
                p["per_class"], p["confusion"] = [], []
            self._truncate_events(0)
            p["initial"] = evaluate()  # the untrained reference for forward transfer
            self._event(
                {"event": "start", "step": 0, "seed": self.seed, "config": config, "metric": objective.metric}
            )
        else:
            p = checkpoint["progress"]
            if not classifying and "tokens" not in p:  # a checkpoint of lifelong <= 0.1: no token counts
                done = p["experience"] + (1 if p["epoch"] or p["batch"] else 0)
                p.update(tokens=0, tokens_seen=[0] * done, train_seconds=[0.0] * done)
                p["experience_steps"] = [0] * done
            self._truncate_events(p["events_bytes"])
            done = len(p["initial"])
            if done < len(stream):  # continued with new experiences: the matrix grows to the right
                self._grow_matrix(p, evaluate, stream, done)
            self._event(
                {
                    "event": "resume",
                    "step": p["step"],
                    "experience": p["experience"],
                    "metric": objective.metric,
                }
            )
        began = time.perf_counter() - p["wall_seconds"]
        step = p["step"]
        epochs = 1 if stream.single_pass else train.epochs
        device = train.device
        log_every = train.log_every
        accum = train.grad_accum
        bar = TrainingProgress(enabled=self.show_progress)
        autocast = _autocast(train)
        counts_tokens = not classifying
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats(device)

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
                data = experience.train
                n, bs = len(data), train.batch_size
                # a step takes `accum` mini-batches; `p["batch"]` counts steps within the epoch
                n_steps = math.ceil(math.ceil(n / bs) / accum)
                total_steps = epochs * n_steps
                ctx = Context(model, objective, optimizer, experience, i, seen, step=step)
                ctx.total_steps = total_steps
                if not resuming:
                    p["start_steps"].append(step)
                    if counts_tokens:
                        p["tokens_seen"].append(0)
                        p["train_seconds"].append(0.0)
                        p["experience_steps"].append(total_steps)
                    for start in start_hooks:
                        start(ctx)
                for select_data in data_hooks:
                    data = select_data(ctx, data)
                n = len(data)
                n_batches = math.ceil(n / bs)
                n_steps = math.ceil(n_batches / accum)
                total_steps = ctx.total_steps = epochs * n_steps
                if counts_tokens:
                    p["experience_steps"][i] = total_steps
                first_epoch, first_batch = (p["epoch"], p["batch"]) if resuming else (0, 0)
                bar.start_experience(i, len(stream), total_steps, first_epoch * n_steps + first_batch)
                if counts_tokens:
                    bar.show_tokens_per_step(bs * accum * int(data.y[0].numel()) if n else 0)
                model.train()
                loss = None  # stays None when a resumed experience has no step left to take
                trained_since = time.perf_counter()

                for epoch in range(first_epoch, epochs):
                    ctx.epoch = epoch
                    order = torch.randperm(
                        n, generator=torch.Generator().manual_seed(_mix(self.seed, i, epoch))
                    )
                    for s in range(first_batch if epoch == first_epoch else 0, n_steps):
                        ctx.step, ctx.local_step = step, epoch * n_steps + s
                        optimizer.zero_grad(set_to_none=True)
                        loss = None
                        micro = range(s * accum, min((s + 1) * accum, n_batches))
                        rows = min((s + 1) * accum * bs, n) - s * accum * bs  # samples in this step
                        for b in micro:
                            idx = order[b * bs : (b + 1) * bs]
                            batch = Split(data.x[idx], data.y[idx], None if data.t is None else data.t[idx])
                            for change_batch in batch_hooks:
                                batch = change_batch(ctx, batch)
                            t = None if batch.t is None else batch.t.to(device)
                            with autocast():
                                out = objective.forward(model, batch.x.to(device), t)
                                if main_loss is None:
                                    part = objective.loss(out, batch.y.to(device))
                                else:
                                    part = main_loss(ctx, batch, out)
                                for extra_loss in loss_hooks:
                                    extra = extra_loss(ctx, batch, out)
                                    if extra is not None:
                                        part = part + extra
                            if len(micro) > 1:
                                # the step's gradient: the mean over its samples, as one big batch gives
                                part = part * (len(idx) / rows)
                            part.backward()
                            loss = part.detach() if loss is None else loss + part.detach()
                            if counts_tokens:
                                p["tokens"] += batch.y.numel()
                                p["tokens_seen"][i] += batch.y.numel()
                        for touch_grads in grad_hooks:
                            touch_grads(ctx)
                        if train.grad_clip is not None:
                            nn.utils.clip_grad_norm_(model.parameters(), train.grad_clip)
                        if train.scheduler != "constant" or train.warmup_steps:
                            self._set_lr(optimizer, i, ctx.local_step, total_steps)
                        optimizer.step()
                        step += 1
                        if log_every and step % log_every == 0:
                            assert loss is not None
                            value, lr = float(loss), optimizer.param_groups[0]["lr"]
                            _check_finite(loss, step, i, data, self._checkpointed())
                            event = {
                                "event": "train",
                                "step": step,
                                "experience": i,
                                "epoch": epoch,
                                "loss": value,
                                "lr": lr,
                            }
                            if counts_tokens:
                                event["tokens"] = p["tokens"]
                                elapsed = p["train_seconds"][i] + time.perf_counter() - trained_since
                                bar.show_speed(p["tokens_seen"][i] / max(elapsed, 1e-9))
                            self._event(event)
                            bar.show_loss(value, lr)
                        bar.advance(step)
                        if train.eval_every and step % train.eval_every == 0:
                            values = evaluate()
                            p["evals"].append({"step": step, "experience": i, "values": values})
                            event = {
                                "event": "eval",
                                "step": step,
                                "experience": i,
                                "epoch": epoch,
                                "metric": objective.metric,
                                "values": values,
                            }
                            if counts_tokens:
                                event["tokens"] = p["tokens"]
                            self._event(event)
                        if train.checkpoint_every and step % train.checkpoint_every == 0:
                            # never checkpoint a diverged model
                            _check_finite(loss, step, i, data, self._checkpointed())
                            nxt = (epoch, s + 1) if s + 1 < n_steps else (epoch + 1, 0)
                            p.update(experience=i, epoch=nxt[0], batch=nxt[1], step=step)
                            if counts_tokens:
                                now = time.perf_counter()
                                p["train_seconds"][i] += now - trained_since
                                trained_since = now
                            self._checkpoint(p, began, f"step-{step:09d}")

                if counts_tokens:
                    p["train_seconds"][i] += time.perf_counter() - trained_since
                _check_finite(loss, step, i, data, self._checkpointed())
                ctx.step = step
                for finish in end_hooks:
                    finish(ctx)
                for method in reporters:  # what a method measured on this experience (e.g. pseudo-labels)
                    report = method.report(ctx)
                    if report is not None:
                        key = method.report_key or method.name
                        entry = {"experience": i, **report}
                        p.setdefault("reports", {}).setdefault(key, []).append(entry)
                        self._event({"event": "method_report", "step": step, "key": key, "report": entry})
                row, confusions = evaluate_end()
                p["matrix"].append(row)
                end_event: dict[str, Any] = {
                    "event": "experience_end",
                    "step": step,
                    "experience": i,
                    "metric": objective.metric,
                    "row": row,
                }
                if counts_tokens:
                    end_event["tokens"] = p["tokens"]
                if confusions is not None:
                    total = torch.stack(confusions).sum(dim=0)
                    p["per_class"].append(per_class_accuracy(total))
                    p["confusion"].append(total.tolist())
                self._event(end_event)
                bar.end_experience(i, objective.metric, row[: i + 1])
                p.update(experience=i + 1, epoch=0, batch=0, step=step)
                self._checkpoint(p, began, f"exp-{i + 1:04d}")
                checkpoint = None

        # class-incremental: the untrained model, and any model trained only on earlier classes, scores 0
        # on unseen classes, so forward transfer is 0 by construction and says nothing
        fwt_meaningful = not (classifying and _disjoint_classes(stream))
        summary = metrics.summary(
            p["matrix"], p["initial"], objective.higher_is_better, fwt_meaningful, metric=objective.metric
        )
        results = Results(
            metric=objective.metric,
            matrix=p["matrix"],
            initial=p["initial"],
            summary=summary,
            stability_gap=metrics.stability_gap(
                p["evals"], p["matrix"], p["start_steps"], objective.higher_is_better
            ),
            config=config,
            seed=self.seed,
            wall_seconds=time.perf_counter() - began,
            experience_names=[experience_name(e) for e in stream],
            experience_start_steps=p["start_steps"],
            method="+".join(m.name for m in self._user_methods()) or "naive",
            label_names=run_directory.label_names(stream) if classifying else None,
            per_class_accuracy=p.get("per_class"),
            confusion=p.get("confusion"),
            tokens_seen=p.get("tokens_seen"),
            tokens_per_second=[
                round(t / s, 1) if s > 0 else None
                for t, s in zip(p.get("tokens_seen", []), p.get("train_seconds", []), strict=True)
            ]
            if counts_tokens
            else None,
            peak_memory_bytes=_peak_memory(device) if counts_tokens else None,
            experience_steps=p.get("experience_steps"),
            schedule=train.scheduler,
            reports=p.get("reports"),
        )
        self._event({"event": "end", "step": step, "summary": summary})
        if self.run_dir is not None:
            st.atomic_write_json(self.run_dir / "results.json", results.to_dict())
        return results

    # --- helpers ----------------------------------------------------------------------------------------

    def _evaluators(self, stream: Stream, objective: Any) -> tuple[Any, Any]:
        """`evaluate()`: the metric on every test set (periodic evaluations); `evaluate_end()`: the same plus
        the confusion matrix of each test set for classification, in one pass."""
        batch_size = self.train.eval_batch_size
        predict_hooks = [m.predict for m in self.methods if overrides(m, "predict")]
        scored = Predicting(self.model, predict_hooks) if predict_hooks else self.model

        def evaluate(sets: Sequence[Split] | None = None) -> list[float]:
            return [objective.evaluate(scored, s, batch_size) for s in (sets or stream.test_sets)]

        def evaluate_end() -> tuple[list[float], list[torch.Tensor] | None]:
            if stream.kind != "classification":
                return evaluate(), None
            confusions = [
                confusion_matrix(objective, scored, s, stream.num_classes, batch_size)
                for s in stream.test_sets
            ]
            return [accuracy_of(c) for c in confusions], confusions

        return evaluate, evaluate_end

    def _grow_matrix(self, p: dict[str, Any], evaluate: Any, stream: Stream, done: int) -> None:
        """A finished run of `done` experiences continues on a longer stream: earlier rows keep their values
        and have none for the new experiences, except the last row: the current model is the model after
        the last experience, so its metric on the new test sets is measured now."""
        new = len(stream) - done
        for row in p["matrix"]:
            row.extend([None] * new)
        if p["matrix"]:
            p["matrix"][-1][done:] = evaluate(stream.test_sets[done:])
        p["initial"].extend([None] * new)  # the untrained model is gone

    def _make_optimizer(self) -> torch.optim.Optimizer:
        tr = self.train
        params = [p for p in self.model.parameters() if p.requires_grad]
        if tr.optimizer == "sgd":
            return torch.optim.SGD(params, lr=tr.lr, momentum=tr.momentum, weight_decay=tr.weight_decay)
        if tr.optimizer == "adam":
            return torch.optim.Adam(params, lr=tr.lr, weight_decay=tr.weight_decay)
        return torch.optim.AdamW(params, lr=tr.lr, weight_decay=tr.weight_decay)

    def _set_lr(self, optimizer: torch.optim.Optimizer, experience: int, local_step: int, total: int) -> None:
        """The schedule's LR at `local_step` of `experience` (`lifelong.schedules`): a pure function of the
        position, so resuming needs no scheduler object."""
        lr = lr_at(self.train, experience, local_step, total)
        for group in optimizer.param_groups:
            group["lr"] = lr

    def _user_methods(self) -> list[Method]:
        """The methods the user gave (without the loop's own, such as wsd's hot weights)."""
        return [m for m in self.methods if not isinstance(m, HotWeights)]

    # --- the run directory ------------------------------------------------------------------------------

    def _checkpointed(self) -> bool:
        return self.run_dir is not None and st.has_checkpoint(self.run_dir)

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
        event["time"] = round(time.time(), 3)
        for logger in self.loggers:
            logger.log(event)
        path = self._events_path()
        if path is None:
            return
        with open(path, "a") as f:
            f.write(json.dumps(event, sort_keys=True) + "\n")


class Predicting(nn.Module):
    """The model as evaluation sees it when a method decides the predictions (e.g. nearest mean)."""

    def __init__(self, model: nn.Module, hooks: list[Any]) -> None:
        super().__init__()
        self.model = model
        self.hooks = hooks

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = logits_of(self.model(x), self.model)
        for predict in self.hooks:
            out = predict(self.model, x, out)
        return out


def _enable_gradient_checkpointing(model: nn.Module) -> None:
    enable = getattr(model, "gradient_checkpointing_enable", None)
    if not callable(enable):
        raise ConfigError(
            f"train.gradient_checkpointing: {type(model).__name__} has no gradient_checkpointing_enable(); "
            "the built-in 'gpt' and Hugging Face models have it (to add it to a model of your own, run its "
            "blocks through torch.utils.checkpoint.checkpoint), or set gradient_checkpointing: false"
        )
    enable()


def _autocast(train: TrainConfig) -> Any:
    """A context manager for the forward pass: bfloat16 autocast with precision 'bf16', else nothing."""
    if train.precision != "bf16":
        return contextlib.nullcontext
    kind = torch.device(train.device).type
    return lambda: torch.autocast(device_type=kind, dtype=torch.bfloat16)


def _peak_memory(device: str) -> int | None:
    """Peak memory of the run: allocated GPU memory on CUDA, else the process's peak resident set."""
    if device.startswith("cuda"):
        return int(torch.cuda.max_memory_allocated(device))
    try:
        import resource
    except ImportError:  # not on Windows
        return None
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # KiB on Linux


def _warm_up() -> None:
    """The first optimizer of a process costs ~1.4 s in torch 2.13 (its constructor imports torch._dynamo).
    Pay it before the clock starts, so `wall_seconds` measures the run, not whichever run came first in the
    process. Constructing one is enough; no step is taken (global step hooks see nothing)."""
    torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.0)


def _check_finite(
    loss: torch.Tensor | None, step: int, experience: int, data: Split, checkpointed: bool
) -> None:
    # checked at logs, checkpoints and experience ends, not every step: a per-step check would sync a GPU
    if loss is None or bool(torch.isfinite(loss.detach())):
        return
    hints = ["lower train.lr, or set train.grad_clip"]
    if torch.is_floating_point(data.x) and len(data):
        largest = float(data.x.abs().max())
        if largest > 100:
            hints.insert(
                0,
                f"the inputs reach |x| = {largest:.3g}: unscaled features make training diverge, so scale "
                "them (scenario.normalize: standard for files, or divide by their range)",
            )
    kept = (
        "The last checkpoint before this point is kept; rerun with the fix and --overwrite "
        "(or another --out)."
        if checkpointed
        else "No checkpoint was written: rerun with the fix (the run directory is reused)."
    )
    raise TrainingDivergedError(
        f"training diverged: the loss is {float(loss.detach()):g} at step {step} "
        f"(experience {experience + 1}); {'; '.join(hints)}. {kept}"
    )


def _mix(*values: int) -> int:
    """A seed for the data order of (seed, experience, epoch) that does not depend on the RNG's history."""
    h = 1469598103934665603
    for v in values:
        h = ((h ^ (v & 0xFFFFFFFF)) * 1099511628211) % (1 << 63)
    return h


def _disjoint_classes(stream: Stream) -> bool:
    """True when no class appears in the training data of two experiences (class-incremental)."""
    if len(stream) < 2 or any(e.classes is None for e in stream) or stream.task_classes is not None:
        return False
    seen: set[int] = set()
    for e in stream:
        classes = set(e.classes or [])
        if classes & seen:
            return False
        seen |= classes
    return True
