"""Exact deletion: sharded training (SISA, Bourtoule et al. 2021) with slices along the stream (as in S3T).

Every training sample goes to one of S shards, by a hash of its id alone; each shard is an ordinary run of the
learner (its own model, methods and memory) trained experience by experience, and its state after every
experience (slice) is kept. The prediction is the mean of the shards' softmax. Deleting samples retrains only
the shards that saw them, and only from their last state before those samples arrived, on the same data
minus the deleted samples: the result is the model that training without those samples from the start gives,
bit for bit (same seeds, same data order, same code path).

    run = ShardedRun.train("runs/sharded", stream, build, TrainConfig(epochs=1), shards=4)
    run.predict(x)                              # the ensemble's classes
    run.forget({"3f2a9c0d1e4b5a6f"})            # sample ids (lifelong.streams.sample_ids)
    run = ShardedRun.open("runs/sharded", stream, build)   # later, with the stream rebuilt from the data

`build()` makes a fresh model and its methods; it is called with the seeds set to `seed + shard`, so each
shard starts from its own fixed initial weights.

The directory:

    sharded.json        shards, seed, training options, experiences trained, the deleted ids, the log of
                        trainings and deletions, the ensemble's accuracy (or perplexity) matrix
    shard-K/            shard K's current state: a learner run directory
    shard-K/slices/E/   a copy of shard K's run directory after experience E (from the first experience
                        that gave it samples on; an experience without samples for it repeats the previous)
    .pending/           a deletion or extension under way: the new shard directories, then commit.json
    .old/               shard directories being replaced
    .lock               held by the one process changing the run (a second one gets a StateError)

A deletion or extension builds the new shard directories under .pending/ and commits by writing
.pending/commit.json; the swap into place follows. `open` finishes a committed change (roll forward) and
discards an uncommitted one (roll back), so a crash at any point leaves the old state or the new one.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import shutil
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lifelong.atomic import atomic_write_json, fsync_dir, read_json
from lifelong.errors import ConfigError, DataError, StateError
from lifelong.evaluation import metrics
from lifelong.learner import Learner, Predicting
from lifelong.methods.base import Method, overrides
from lifelong.objectives import eval_batch_size, objective_for
from lifelong.seeding import seed as seed_everything
from lifelong.streams.experience import Experience, Split, Stream
from lifelong.streams.sample_ids import sample_ids
from lifelong.training import TrainConfig
from lifelong.validation import check_stream_fits_model

Build = Callable[[], tuple[nn.Module, list[Method]]]

META = "sharded.json"
SLICES = "slices"
PENDING = ".pending"
OLD = ".old"
COMMIT = "commit.json"
LOCK = ".lock"
FORMAT = 1
SHOWN_IDS = 5  # unknown ids quoted in an error message


def shard_of(sample_id: str, shards: int) -> int:
    """The shard of a sample: SHA-256 of its id, modulo the number of shards (never depends on other samples).

    >>> shard_of("a", 4), shard_of("a", 4) == shard_of("a", 4)
    (2, True)
    """
    return int(hashlib.sha256(sample_id.encode()).hexdigest(), 16) % shards


class ShardedRun:
    """S shard models trained on disjoint parts of a stream, each slice by slice; see the module docstring.

    Make one with `ShardedRun.train` and reopen it with `ShardedRun.open`; the constructor is internal."""

    def __init__(
        self, out_dir: Path, stream: Stream, build: Build, meta: dict[str, Any], progress: bool = False
    ) -> None:
        self.out_dir = out_dir
        self.stream = stream
        self.build = build
        self.meta = meta
        self.progress = progress
        self.config = TrainConfig(**meta["train"])
        self._ids: list[list[str]] = []  # per experience of `stream`: its training samples' ids
        self._shard: list[list[int]] = []  # ... and their shards
        self._models: list[tuple[nn.Module, nn.Module]] | None = None  # (scored, raw) per live shard

    # --- making and opening ------------------------------------------------------------------------------

    @classmethod
    def train(
        cls,
        out_dir: str | Path,
        stream: Stream,
        build: Build,
        train: TrainConfig,
        shards: int,
        seed: int = 0,
        progress: bool = False,
    ) -> ShardedRun:
        """Train `shards` shard models on `stream` in the new directory `out_dir`.

        >>> run = ShardedRun.train(tmp / "sharded", stream, build, TrainConfig(epochs=1), shards=2)
        >>> run.meta["ensemble"]["summary"]["acc"]       # the ensemble's final accuracy
        """
        out = Path(out_dir)
        _check_arguments(stream, build, train, shards, seed)
        _check_build(stream, build, train, seed)
        if out.exists() and not out.is_dir():
            raise StateError(f"{out} is a file; choose a new directory for the sharded run")
        if out.exists() and any(out.iterdir()):
            meta_path = out / META
            unfinished = meta_path.exists() and not read_json(meta_path, "sharded run").get("complete", True)
            if not unfinished:
                raise StateError(
                    f"{out} is not empty; choose a new directory for the sharded run (an existing sharded "
                    "run is reopened with ShardedRun.open(out_dir, stream, build)); nothing in it was changed"
                )
            shutil.rmtree(out)  # what a training killed before it finished left: nothing to keep
        out.mkdir(parents=True, exist_ok=True)
        meta: dict[str, Any] = {
            "format": FORMAT,
            "complete": False,
            "shards": shards,
            "seed": seed,
            "train": train.model_dump(),
            "kind": stream.kind,
            "num_classes": stream.num_classes,
            "input_shape": list(stream.input_shape),
            "experiences": len(stream),
            "deleted": [],
            "log": [],
        }
        atomic_write_json(out / META, meta)  # marks the folder as a sharded run still being trained
        run = cls(out, stream, build, meta, progress)
        began = time.perf_counter()
        slices: dict[str, list[int]] = {}
        for k in range(shards):
            slices[str(k)] = run._train_shard(out / _shard_name(k), k, set(), 0)
        meta["ensemble"] = run._ensemble({k: out / _shard_name(k) for k in range(shards)}, 0, [])
        meta["digests"] = run._digests(set())
        meta["sizes"] = run._sizes(set())
        meta["log"].append(_record("train", began, experiences=len(stream), slices=slices))
        meta["complete"] = True
        atomic_write_json(out / META, meta)
        return run

    @classmethod
    def open(cls, out_dir: str | Path, stream: Stream, build: Build, progress: bool = False) -> ShardedRun:
        """The sharded run in `out_dir`, with `stream` (the data it was trained on, rebuilt; samples deleted
        since may be missing or present: they stay deleted). A deletion or extension that a crash interrupted
        is finished if it had committed, else discarded."""
        out = Path(out_dir)
        meta_path = out / META
        if not meta_path.is_file():
            raise StateError(
                f"{out} holds no sharded run (no {META}); make one with "
                "ShardedRun.train(out_dir, stream, ...)"
            )
        if (out / PENDING).exists():
            with _writer_lock(out):
                _recover(out)
        meta = read_json(meta_path, "sharded run")
        if meta.get("format") != FORMAT:
            raise StateError(f"{meta_path} has format {meta.get('format')!r}; this version reads {FORMAT}")
        if not meta.get("complete"):
            raise StateError(
                f"the sharded run in {out} did not finish training (killed?); train it again with "
                "ShardedRun.train (the unfinished directory is replaced)"
            )
        if not callable(build):
            raise ConfigError("build must be a function returning (model, methods), as given to train")
        run = cls(out, stream, build, meta, progress)
        run._check_stream(stream, meta["experiences"])
        return run

    # --- what the run holds -------------------------------------------------------------------------------

    @property
    def shards(self) -> int:
        return int(self.meta["shards"])

    @property
    def seed(self) -> int:
        return int(self.meta["seed"])

    @property
    def experiences(self) -> int:
        """How many experiences of the stream the shards have been trained on."""
        return int(self.meta["experiences"])

    @property
    def deleted(self) -> frozenset[str]:
        return frozenset(self.meta["deleted"])

    def shard_dir(self, k: int) -> Path:
        """Shard `k`'s run directory (absent while the shard has had no sample)."""
        return self.out_dir / _shard_name(k)

    def shard_ids(self, k: int) -> list[str]:
        """The ids of the samples shard `k` is trained on now (deleted ones excluded), in stream order."""
        deleted = self.deleted
        return [
            self._ids_of(g)[i] for g in range(self.experiences) for i in self._rows(k, g, deleted)
        ]

    # --- prediction ----------------------------------------------------------------------------------------

    @torch.no_grad()
    def scores(self, x: torch.Tensor, t: torch.Tensor | None = None) -> torch.Tensor:
        """The ensemble's probabilities: the mean of the shards' softmax, `[N, classes]` (language models:
        `[N, T, vocabulary]`). `t`: task labels, for a task-incremental stream."""
        models = self._live_models()
        objective = objective_for(self.stream)
        outs = []
        batch = self._eval_batch(x)
        for i in range(0, len(x), batch):
            xb = x[i : i + batch]
            tb = None if t is None else t[i : i + batch]
            outs.append(_mean_softmax(models, objective, xb, tb))
        if not outs:
            return torch.empty(0, self.stream.num_classes)
        return torch.cat(outs)

    def predict(self, x: torch.Tensor, t: torch.Tensor | None = None) -> torch.Tensor:
        """The ensemble's predicted classes (language models: next tokens), the argmax of `scores`."""
        if self.stream.kind != "classification":
            raise ConfigError(
                "predict gives classes of a classification run; for a language model use scores(x), the "
                "ensemble's next-token probabilities"
            )
        return self.scores(x, t).argmax(dim=-1)

    # --- changes -----------------------------------------------------------------------------------------

    def extend(self, stream: Stream) -> dict[str, Any]:
        """Train every shard on the experiences `stream` adds at the end of the one trained so far (the
        deleted samples stay out). Returns what was trained and the seconds taken."""
        with _writer_lock(self.out_dir):
            return self._extend(stream)

    def forget(self, ids: Iterable[str]) -> dict[str, Any]:
        """Delete the training samples with these ids: each shard that holds any of them is retrained from
        its state before the first slice holding one, on its later slices without them. Ids never trained on
        raise DataError before anything changes; ids deleted before are counted and skipped. Returns which
        shards and slices were retrained and the seconds taken."""
        with _writer_lock(self.out_dir):
            return self._forget(ids)

    def _extend(self, stream: Stream) -> dict[str, Any]:
        if not isinstance(stream, Stream):
            raise DataError(f"extend takes a Stream, got {type(stream).__name__}")
        self._sync()
        n = self.experiences
        if len(stream) <= n:
            raise DataError(
                f"the stream given to extend has {len(stream)} experiences and the shards were trained on "
                f"{n}; add the new data as experiences at the end of the stream"
            )
        began = time.perf_counter()
        kept = (self.stream, self._ids, self._shard)
        self.stream, self._ids, self._shard = stream, [], []  # ids recomputed from the stream given
        pending: Path | None = None
        try:
            self._check_stream(stream, n)
            pending = self._begin()
            deleted = set(self.meta["deleted"])
            slices: dict[str, list[int]] = {}
            locations: dict[int, Path] = {}
            for k in range(self.shards):
                current = self.shard_dir(k)
                target = pending / _shard_name(k)
                if current.exists():
                    _copy_run(current, target)
                trained = self._train_shard(target, k, deleted, n)
                if target.exists():
                    locations[k] = target
                    slices[str(k)] = trained
            meta = dict(self.meta)
            meta["experiences"] = len(stream)
            meta["ensemble"] = self._ensemble(locations, n, self.meta["ensemble"]["matrix"])
            meta["digests"] = self._digests(deleted)
            meta["sizes"] = self._sizes(deleted)
            record = _record("extend", began, experiences=len(stream) - n, slices=slices)
            meta["log"] = [*self.meta["log"], record]
            self._commit(pending, replace=sorted(locations), remove=[], meta=meta)
        except BaseException:
            self.stream, self._ids, self._shard = kept
            if pending is not None:
                _abandon(pending)
            raise
        return record

    def _forget(self, ids: Iterable[str]) -> dict[str, Any]:
        if isinstance(ids, str):
            raise DataError(f"forget takes a set of sample ids, not one string ({ids!r}): pass {{{ids!r}}}")
        wanted = {str(i) for i in ids}
        if not wanted:
            raise DataError("forget was given no ids; pass the ids of the samples to delete")
        began = time.perf_counter()
        self._sync()
        n = self.experiences
        deleted = set(self.meta["deleted"])
        seen = {sid for g in range(n) for sid in self._ids_of(g) if sid in wanted}
        unknown = sorted(wanted - seen - deleted)
        if unknown:
            shown = ", ".join(repr(u) for u in unknown[:SHOWN_IDS])
            more = f" and {len(unknown) - SHOWN_IDS} more" if len(unknown) > SHOWN_IDS else ""
            raise DataError(
                f"{len(unknown)} of the {len(wanted)} ids were never trained on by the sharded run in "
                f"{self.out_dir}: {shown}{more}. Pass ids of its training samples (the data's id_column, or "
                "the content hashes of lifelong.streams.sample_ids.sample_ids); nothing was changed"
            )
        new = wanted - deleted
        if not new:
            return _record("forget", began, ids=[], already_deleted=len(wanted), shards={})
        after = deleted | new
        first: dict[int, int] = {}  # shard -> first experience holding one of the new ids
        for g in range(n):
            ids_g, shard_g = self._ids_of(g), self._shard_of(g)
            for i, sid in enumerate(ids_g):
                if sid in new:
                    k = shard_g[i]
                    first[k] = min(first.get(k, g), g)
        if all(sid in after for g in range(n) for sid in self._ids_of(g)):
            raise DataError(
                "forgetting these ids would leave the sharded run with no training data at all; train a new "
                "run on other data instead (nothing was changed)"
            )
        pending = self._begin()
        try:
            retrained: dict[str, Any] = {}
            locations = {k: self.shard_dir(k) for k in range(self.shards) if self.shard_dir(k).exists()}
            replace, remove = [], []
            for k, g in sorted(first.items()):
                started = time.perf_counter()
                target = pending / _shard_name(k)
                base = self.shard_dir(k) / SLICES / str(g - 1)
                if g > 0 and base.exists():
                    _copy_snapshot(self.shard_dir(k), g - 1, target)
                trained = self._train_shard(target, k, after, g)
                retrained[str(k)] = {
                    "from_experience": g,
                    "slices": trained,
                    "seconds": round(time.perf_counter() - started, 3),
                }
                if target.exists():
                    replace.append(k)
                    locations[k] = target
                else:  # every sample it had is deleted
                    remove.append(k)
                    locations.pop(k, None)
            meta = dict(self.meta)
            meta["deleted"] = sorted(after)
            meta["ensemble"] = self._ensemble(locations, min(first.values()), self.meta["ensemble"]["matrix"])
            meta["digests"] = self._digests(after)
            meta["sizes"] = self._sizes(after)
            record = _record(
                "forget", began, ids=sorted(new), already_deleted=len(wanted) - len(new), shards=retrained
            )
            meta["log"] = [*self.meta["log"], record]
            self._commit(pending, replace=replace, remove=remove, meta=meta)
        except BaseException:
            _abandon(pending)
            raise
        return record

    # --- training one shard ------------------------------------------------------------------------------

    def _train_shard(self, run_dir: Path, k: int, deleted: set[str], start: int) -> list[int]:
        """Train shard `k` in `run_dir` (which holds its state after experience `start - 1`, or nothing) on
        experiences `start`.. of the stream without `deleted`; snapshot after each. Returns the experiences
        trained (those with samples for the shard)."""
        n = len(self.stream)
        local = [g for g in range(n) if self._rows(k, g, deleted)]  # the shard's own stream
        if not any(g >= start for g in local) and not (run_dir / "config.json").exists():
            return []  # nothing to train, and no state to carry
        experiences: dict[int, Experience] = {}

        def experience(g: int) -> Experience:
            if g not in experiences:
                experiences[g] = self._experience(k, g, deleted)
            return experiences[g]

        started = (run_dir / "config.json").exists()
        trained = []
        for g in range(start, n):
            if g in local:
                j = local.index(g)
                if (j > 0) != started:
                    raise StateError(
                        f"shard {k} of {self.out_dir} does not hold the state its slices say (experience "
                        f"{g + 1}); the directory was modified: train the sharded run again"
                    )
                shard_stream = self._shard_stream([experience(h) for h in local[: j + 1]])
                seed_everything(self.seed + k)
                model, methods = self.build()
                learner = Learner(
                    model,
                    methods,
                    self.config,
                    run_dir=run_dir,
                    seed=self.seed + k,
                    progress=self.progress,
                    report=False,
                )
                learner.run(shard_stream, extend=j > 0)
                started = True
                trained.append(g)
                _snapshot(run_dir, g)
            elif started:
                _link_tree(run_dir / SLICES / str(g - 1), run_dir / SLICES / str(g))
        return trained

    def _shard_stream(self, experiences: list[Experience]) -> Stream:
        s = self.stream
        with warnings.catch_warnings():
            # rare classes within one shard are expected; the whole stream was checked when it was built
            warnings.simplefilter("ignore", UserWarning)
            return Stream(
                s.name, experiences, s.kind, s.num_classes, tuple(s.input_shape), s.single_pass, dict(s.info)
            )

    def _experience(self, k: int, g: int, deleted: set[str]) -> Experience:
        """Experience `g` with only shard `k`'s samples that are not deleted (its test split whole)."""
        e = self.stream[g]
        rows = self._rows(k, g, deleted)
        ids = self._ids_of(g)
        info = dict(e.info)
        if isinstance(info.get("ids"), dict):
            info["ids"] = {**info["ids"], "train": [ids[i] for i in rows]}
        return Experience(
            id=e.id,
            train=e.train.subset(torch.tensor(rows, dtype=torch.long)),
            test=e.test,
            classes=e.classes,
            task=e.task,
            domain=e.domain,
            info=info,
        )

    def _ids_of(self, g: int) -> list[str]:
        while len(self._ids) <= g:
            ids = sample_ids(self.stream[len(self._ids)])
            self._ids.append(ids)
            self._shard.append([shard_of(i, self.shards) for i in ids])
        return self._ids[g]

    def _shard_of(self, g: int) -> list[int]:
        self._ids_of(g)
        return self._shard[g]

    def _rows(self, k: int, g: int, deleted: set[str] | frozenset[str]) -> list[int]:
        ids, shard = self._ids_of(g), self._shard_of(g)
        return [i for i, (sid, s) in enumerate(zip(ids, shard, strict=True)) if s == k and sid not in deleted]

    def _digests(self, deleted: set[str]) -> list[str]:
        """Per experience: SHA-256 of its training ids that are not deleted, sorted (a rebuilt stream must
        give the same, whether or not it still holds the deleted samples)."""
        out = []
        for g in range(len(self.stream)):
            kept = sorted(i for i in self._ids_of(g) if i not in deleted)
            out.append(hashlib.sha256("\n".join(kept).encode()).hexdigest())
        return out

    def _sizes(self, deleted: set[str]) -> list[list[int]]:
        """Samples per shard (rows) and experience (columns) trained on."""
        return [[len(self._rows(k, g, deleted)) for g in range(len(self.stream))] for k in range(self.shards)]

    def _check_stream(self, stream: Stream, n: int) -> None:
        meta = self.meta
        for key, value in (
            ("kind", stream.kind),
            ("num_classes", stream.num_classes),
            ("input_shape", list(stream.input_shape)),
        ):
            if meta[key] != value:
                raise DataError(
                    f"the stream's {key} is {value!r} but the sharded run in {self.out_dir} was trained with "
                    f"{meta[key]!r}; pass the stream it was trained on"
                )
        if len(stream) < n:
            raise DataError(
                f"the stream has {len(stream)} experiences but the sharded run in {self.out_dir} was trained "
                f"on {n}; rebuild the whole stream it was trained on"
            )
        deleted = set(meta["deleted"])
        saved = meta.get("digests", [])
        for g in range(n):
            kept = sorted(i for i in self._ids_of(g) if i not in deleted)
            if hashlib.sha256("\n".join(kept).encode()).hexdigest() != saved[g]:
                raise DataError(
                    f"the training data of experience {g + 1} differs from what the sharded run in "
                    f"{self.out_dir} was trained on (other samples, deleted ones aside); rebuild the stream "
                    "from the same data"
                )

    # --- the ensemble ------------------------------------------------------------------------------------

    def _live_models(self) -> list[tuple[nn.Module, nn.Module]]:
        if self._models is None:
            self._models = [
                self._load(k, self.shard_dir(k)) for k in range(self.shards) if self.shard_dir(k).exists()
            ]
        return self._models

    def _load(self, k: int, run_dir: Path) -> tuple[nn.Module, nn.Module]:
        """Shard `k`'s model from a run directory (or snapshot): (as evaluation scores it, the model)."""
        from lifelong.inference import load

        seed_everything(self.seed + k)
        model, methods = self.build()
        trained = load(run_dir, model=model, methods=methods)
        hooks = [m.predict for m in trained.methods if overrides(m, "predict")]
        trained.model.eval()
        return (Predicting(trained.model, hooks) if hooks else trained.model), trained.model

    def _eval_batch(self, x: torch.Tensor) -> int:
        if self.stream.kind == "classification":
            return self.config.eval_batch_size
        block = int(x.shape[1]) if x.dim() > 1 else 1
        return eval_batch_size(self.config.eval_batch_size, block, self.stream.num_classes)

    def _ensemble(
        self, locations: dict[int, Path], first_row: int, matrix: Sequence[Sequence[float | None]]
    ) -> dict[str, Any]:
        """The ensemble's matrix: row g, the ensemble after experience g (each shard's snapshot g) on the
        test sets of experiences 0..g (None after); rows before `first_row` are kept from `matrix`."""
        objective = objective_for(self.stream)
        rows = [list(r) + [None] * (len(self.stream) - len(r)) for r in matrix[:first_row]]
        for g in range(first_row, len(self.stream)):
            models = [
                self._load(k, path / SLICES / str(g))
                for k, path in sorted(locations.items())
                if (path / SLICES / str(g)).exists()
            ]
            tests = [e.test for e in self.stream.experiences[: g + 1]]
            row: list[float | None] = [self._metric(models, objective, test) for test in tests]
            rows.append(row + [None] * (len(self.stream) - g - 1))
        summary = metrics.summary(
            rows, None, objective.higher_is_better, fwt_meaningful=True, metric=objective.metric
        )
        return {"metric": objective.metric, "matrix": rows, "summary": summary}

    @torch.no_grad()
    def _metric(self, models: list[tuple[nn.Module, nn.Module]], objective: Any, split: Split) -> float:
        """Accuracy (classification) or perplexity (language models) of the mean of the shards' softmax."""
        batch = self._eval_batch(split.x)
        correct, total, tokens = 0, 0.0, 0
        for i in range(0, len(split), batch):
            x, y = split.x[i : i + batch], split.y[i : i + batch]
            t = None if split.t is None else split.t[i : i + batch]
            probs = _mean_softmax(models, objective, x, t)
            if self.stream.kind == "classification":
                correct += int((probs.argmax(dim=-1) == y).sum())
            else:
                picked = probs.gather(-1, y.unsqueeze(-1)).squeeze(-1)
                total += float(-picked.clamp_min(1e-30).log().sum())
                tokens += y.numel()
        if self.stream.kind == "classification":
            return correct / len(split)
        return math.exp(total / tokens)

    # --- the transaction ---------------------------------------------------------------------------------

    def _sync(self) -> None:
        """Finish or discard a change a crash (or an error after its commit) left, and reread the state."""
        _recover(self.out_dir)
        meta = read_json(self.out_dir / META, "sharded run")
        if meta != self.meta:
            self.meta, self._models = meta, None

    def _begin(self) -> Path:
        pending = self.out_dir / PENDING
        pending.mkdir()
        return pending

    def _commit(self, pending: Path, replace: list[int], remove: list[int], meta: dict[str, Any]) -> None:
        for path in pending.rglob("*"):
            if path.is_file():
                _fsync_file(path)
        fsync_dir(pending)
        # the commit point: from here on, `open` finishes the change instead of discarding it
        atomic_write_json(pending / COMMIT, {"replace": replace, "remove": remove, "meta": meta})
        _apply(self.out_dir)
        self.meta = meta
        self._models = None


# --- the directory -----------------------------------------------------------------------------------------


def _shard_name(k: int) -> str:
    return f"shard-{k}"


@contextlib.contextmanager
def _writer_lock(out: Path) -> Iterator[None]:
    """One process at a time changes a sharded run: an exclusive lock on `out/.lock`, or StateError."""
    try:
        import fcntl
    except ImportError:  # not on Windows: no lock
        yield
        return
    fd = os.open(out / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StateError(
                f"the sharded run in {out} is being changed by another process (a deletion or an "
                "extension); try again when it has finished"
            ) from None
        yield
    finally:
        os.close(fd)  # releases the lock


def _recover(out: Path) -> None:
    """Finish a committed change (roll forward) or discard an uncommitted one (roll back)."""
    pending = out / PENDING
    if (pending / COMMIT).is_file():
        _apply(out)
    elif pending.exists():
        shutil.rmtree(pending)
    shutil.rmtree(out / OLD, ignore_errors=True)


def _abandon(pending: Path) -> None:
    """After an error: discard an uncommitted change; a committed one is finished by the next `open`."""
    if not (pending / COMMIT).exists():
        shutil.rmtree(pending, ignore_errors=True)


def _apply(out: Path) -> None:
    """Move the committed shard directories into place and write the new sharded.json. Idempotent: a crash
    at any point of it is finished by running it again."""
    pending, old = out / PENDING, out / OLD
    commit = read_json(pending / COMMIT, "sharded run commit")
    old.mkdir(exist_ok=True)
    for k in commit["replace"]:
        new = pending / _shard_name(k)
        if not new.exists():  # moved in already
            continue
        current = out / _shard_name(k)
        if current.exists():
            shutil.rmtree(old / _shard_name(k), ignore_errors=True)
            os.replace(current, old / _shard_name(k))
        os.replace(new, current)
    for k in commit["remove"]:
        current = out / _shard_name(k)
        if current.exists():
            shutil.rmtree(old / _shard_name(k), ignore_errors=True)
            os.replace(current, old / _shard_name(k))
    fsync_dir(out)
    atomic_write_json(out / META, commit["meta"])
    shutil.rmtree(pending)
    shutil.rmtree(old, ignore_errors=True)


def _snapshot(run_dir: Path, g: int) -> None:
    """Copy `run_dir` (without its snapshots) to `run_dir/slices/g`."""
    slices = run_dir / SLICES
    slices.mkdir(exist_ok=True)
    target, tmp = slices / str(g), slices / f".{g}.tmp"
    for leftover in (tmp, target):
        if leftover.exists():
            shutil.rmtree(leftover)

    def skip(folder: str, names: list[str]) -> set[str]:
        return {SLICES, "report.html"} & set(names) if Path(folder) == run_dir else set()

    # real copies: the run directory's events.jsonl is appended to in place by later training
    shutil.copytree(run_dir, tmp, ignore=skip)
    os.replace(tmp, target)


def _copy_run(src: Path, dst: Path) -> None:
    """A copy of a shard directory to train on: its own files copied, its snapshots (never changed once
    written) hard-linked."""

    def skip(folder: str, names: list[str]) -> set[str]:
        return {SLICES} & set(names) if Path(folder) == src else set()

    shutil.copytree(src, dst, ignore=skip)
    if (src / SLICES).exists():
        _link_tree(src / SLICES, dst / SLICES)


def _copy_snapshot(shard_dir: Path, g: int, dst: Path) -> None:
    """A shard directory holding the state after experience `g`: snapshot g copied, snapshots 0..g linked."""
    shutil.copytree(shard_dir / SLICES / str(g), dst)
    for h in range(g + 1):
        snap = shard_dir / SLICES / str(h)
        if snap.exists():
            _link_tree(snap, dst / SLICES / str(h))


def _link_tree(src: Path, dst: Path) -> None:
    def link(a: str, b: str) -> None:
        try:
            os.link(a, b)
        except OSError:  # a file system without hard links
            shutil.copy2(a, b)

    shutil.copytree(src, dst, copy_function=link)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --- helpers ------------------------------------------------------------------------------------------------


def _mean_softmax(
    models: list[tuple[nn.Module, nn.Module]], objective: Any, x: torch.Tensor, t: torch.Tensor | None
) -> torch.Tensor:
    if not models:
        raise StateError("the sharded run has no trained shard; train it first")
    total: torch.Tensor | None = None
    for scored, model in models:
        device = next(model.parameters()).device
        out = objective.forward(scored, x.to(device), None if t is None else t.to(device))
        p = F.softmax(out.float(), dim=-1).cpu()
        total = p if total is None else total + p
    assert total is not None
    return total / len(models)


def _record(event: str, began: float, **fields: Any) -> dict[str, Any]:
    return {
        "event": event,
        "time": datetime.now(UTC).isoformat(timespec="seconds"),
        "seconds": round(time.perf_counter() - began, 3),
        **fields,
    }


def _check_build(stream: Stream, build: Build, train: TrainConfig, seed: int) -> None:
    """What the learner checks before a run, done once before anything is written: `build` gives a model
    and methods that can run together and fit the stream."""
    seed_everything(seed)
    built = build()
    if not (isinstance(built, tuple) and len(built) == 2 and isinstance(built[1], list | tuple)):
        raise ConfigError(
            "build() must return (model, methods), a torch model and a list of methods; got "
            f"{type(built).__name__}"
        )
    model, methods = built
    learner = Learner(model, methods, train, progress=False)  # checks the types and the composition
    objective = objective_for(stream)
    check_stream_fits_model(stream, model, objective)
    for method in learner.methods:
        method.check(stream, objective, learner.methods)


def _check_arguments(stream: Stream, build: Build, train: TrainConfig, shards: int, seed: int) -> None:
    if not isinstance(stream, Stream):
        raise DataError(f"ShardedRun.train takes a Stream, got {type(stream).__name__}")
    if not callable(build):
        raise ConfigError("build must be a function of no arguments returning (model, methods)")
    if not isinstance(train, TrainConfig):
        raise ConfigError(f"train must be a lifelong.training.TrainConfig, got {type(train).__name__}")
    if isinstance(shards, bool) or not isinstance(shards, int) or shards < 1:
        raise ConfigError(f"shards must be a whole number >= 1, got {shards!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"seed must be an int, got {seed!r}")
    if train.checkpoint_every is not None:
        raise ConfigError(
            "train.checkpoint_every: a sharded run keeps the state after every experience (its slices); "
            "leave checkpoint_every unset"
        )
