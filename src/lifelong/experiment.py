"""From a validated config to a stream, a model, methods and a learner: what `lifelong run` does.

cfg = load_config("run.yaml")
results = run_config(cfg, out="runs/er")
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from lifelong import datasets
from lifelong.config import RunConfig, load_config, parse_config
from lifelong.datasets import Dataset, TextCorpus
from lifelong.errors import ConfigError, DataError, StateError
from lifelong.imports import accepts, method_class
from lifelong.learner import Learner, Results
from lifelong.loggers import build_loggers
from lifelong.methods import Method
from lifelong.models import build_model
from lifelong.run_directory import RUN_INFO
from lifelong.state import read_json
from lifelong.streams import from_files, scenarios, text_domains
from lifelong.streams.experience import Stream


def build_stream(cfg: RunConfig, tokenizer: Any = None) -> Stream:
    """The stream of `cfg`'s data and scenario. A text stream is tokenized with `tokenizer` (the model's,
    for a pretrained language model), or as the config's model says (bytes, or a BPE trained here)."""
    sc = cfg.scenario
    if sc.type == "files" and not cfg.text_files:
        assert sc.path is not None
        return from_files(sc.path, **_table_options(cfg))
    if sc.type == "files" or sc.type == "domains":
        return _text_stream(cfg, _corpus(cfg), tokenizer)
    assert cfg.data is not None
    source = datasets.load(cfg.data.name, **_load_options(cfg))  # type: ignore[arg-type]
    assert isinstance(source, Dataset)
    ds = scenarios.subsample(source, cfg.data.train_per_class, cfg.data.test_per_class, seed=sc.seed)
    n = sc.experiences or 5
    if sc.type in ("class_incremental", "online"):
        stream = scenarios.class_incremental(ds, n, sc.class_order, sc.seed)
        return scenarios.online(stream, sc.blurry, sc.seed) if sc.type == "online" else stream
    if sc.type == "task_incremental":
        return scenarios.task_incremental(ds, n, sc.class_order, sc.seed)
    if sc.type == "permuted":
        return scenarios.permuted(ds, n, sc.seed)
    return scenarios.rotated(ds, n, sc.angles, sc.seed)


def _corpus(cfg: RunConfig) -> TextCorpus:
    """The text of a language-modelling run: user files (one domain per file or folder), one registered
    corpus (its own domains), or a list of corpora (one domain each, holding all of its documents)."""
    sc = cfg.scenario
    if sc.type == "files":
        from lifelong.streams.text_files import read_text_domains

        assert sc.path is not None
        return read_text_domains(
            sc.path, text_column=sc.text_column or "text", encoding=sc.encoding, format=sc.format
        )
    assert cfg.data is not None
    corpora = []
    for name in cfg.data.names:
        corpus = datasets.load(name, **_load_options(cfg))
        assert isinstance(corpus, TextCorpus)  # the config checked the kinds
        corpora.append(corpus)
    if not isinstance(cfg.data.name, list):
        return corpora[0]
    return TextCorpus(
        name="+".join(cfg.data.names),
        domains={c.name: [doc for docs in c.domains.values() for doc in docs] for c in corpora},
        source="; ".join(c.source for c in corpora),
    )


def _bpe(cfg: RunConfig, corpus: TextCorpus) -> Any:
    """`model: {name: gpt, tokenizer: bpe}`: a BPE trained on the stream's text (cached: the same text gives
    the same tokenizer, so a resumed or continued run gets it back), else None."""
    if getattr(cfg.model, "tokenizer", "bytes") != "bpe":
        return None
    from lifelong.lm.bpe import train_bpe

    sc = cfg.scenario
    names = sc.domains or list(corpus.domains)
    picked = {d: corpus.domains[d] for d in names if d in corpus.domains}
    if sc.max_tokens is not None:
        # with a token budget, the BPE learns from about as much text per domain as the stream keeps (~4
        # characters a token, with room to spare): not from a whole 12M-token dictionary for 20k tokens
        picked = {
            d: _first_characters(docs, 8 * (sc.max_tokens + (sc.max_test_tokens or 0)))
            for d, docs in picked.items()
        }
    return train_bpe(
        TextCorpus(corpus.name, picked), vocab_size=getattr(cfg.model, "vocab_size", None) or 4096
    )


def _first_characters(docs: list[str], limit: int) -> list[str]:
    """The documents, in order, up to `limit` characters in all (the last one cut)."""
    out, left = [], limit
    for doc in docs:
        if left <= 0:
            break
        out.append(doc[:left])
        left -= len(doc)
    return out


def _text_stream(cfg: RunConfig, corpus: TextCorpus, tokenizer: Any) -> Stream:
    sc = cfg.scenario
    if tokenizer is None:
        tokenizer = _bpe(cfg, corpus)
    if tokenizer is None and sc.max_tokens is None and sc.max_test_tokens is None and sc.type == "domains":
        # bytes, no token budget: the original packing (its streams and results stay as they were)
        return text_domains(
            corpus,
            domains=sc.domains,
            block_size=sc.block_size,
            test_fraction=sc.test_fraction,
            max_blocks_per_domain=sc.max_blocks_per_domain,
            seed=sc.seed,
        )
    from lifelong.lm.tokens import token_domains
    from lifelong.streams.text import ByteTokenizer

    max_tokens = sc.max_tokens
    if sc.max_blocks_per_domain is not None:
        cap = sc.max_blocks_per_domain * sc.block_size
        max_tokens = cap if max_tokens is None else min(max_tokens, cap)
    return token_domains(
        corpus,
        tokenizer if tokenizer is not None else ByteTokenizer(),
        domains=sc.domains,
        block_size=sc.block_size,
        max_tokens=max_tokens,
        max_test_tokens=sc.max_test_tokens,
        test_fraction=sc.test_fraction,
        seed=sc.seed,
        progress=True,
    )


def _pretrained(cfg: RunConfig, training: bool = True) -> Any:
    """The pretrained language model a config names (`hf`, `smollm2`) with its tokenizer, or None. For
    `training`, the memory the run needs is estimated from the model's config first, before any weight is
    read."""
    name = cfg.model.name
    if name not in ("hf", "smollm2"):
        return None
    from lifelong.lm.hf import load_causal_lm
    from lifelong.lm.memory import check_training_memory
    from lifelong.objectives import eval_batch_size

    if name == "smollm2":
        from lifelong.lm.smollm2 import smollm2_folder

        path, tokenizer = str(smollm2_folder()), None
    else:
        path, tokenizer = cfg.model.path, cfg.model.tokenizer  # type: ignore[union-attr]
    dtype = cfg.model.dtype  # type: ignore[union-attr]
    tr = cfg.train
    if not training:
        return load_causal_lm(path, dtype, device="cpu", tokenizer=tokenizer)
    check_training_memory(
        path,
        batch_size=tr.batch_size,
        block_size=cfg.scenario.block_size,
        dtype=dtype,
        optimizer=tr.optimizer,
        momentum=tr.momentum,
        methods=build_methods(cfg),
        gradient_checkpointing=tr.gradient_checkpointing,
        precision=tr.precision,
        eval_batch_size=eval_batch_size(tr.eval_batch_size, cfg.scenario.block_size, 50_000),
        device=tr.device,
    )
    return load_causal_lm(path, dtype, device="cpu", tokenizer=tokenizer)


def _table_options(cfg: RunConfig) -> dict[str, Any]:
    """The `from_files` options a `files` scenario sets: every scenario key `from_files` takes but `path`."""
    accepted = inspect.signature(from_files).parameters
    return {k: v for k, v in cfg.scenario.model_dump().items() if k in accepted and k != "path"}


def _load_options(cfg: RunConfig) -> dict[str, Any]:
    assert cfg.data is not None
    options: dict[str, Any] = {}
    if cfg.data.root is not None:
        options["root"] = cfg.data.root
    if cfg.data.download:
        options["download"] = True
    return options


def build_methods(cfg: RunConfig) -> list[Method]:
    """The config's methods, in order (built-in, or a class of your own by import path); a method that
    draws random numbers gets the run's seed."""
    out = []
    for m in cfg.methods:
        cls = method_class(m.name)
        options = m.model_dump(exclude={"name"})
        if accepts(cls, "seed"):
            options["seed"] = cfg.seed
        out.append(cls(**options))
    return out


def build_learner(
    cfg: RunConfig, out: str | Path | None = None, progress: bool = True
) -> tuple[Learner, Stream]:
    """The stream and a learner (model and methods inside) that `run_config` would run."""
    if cfg.shards > 1:
        raise ConfigError(
            f"shards: {cfg.shards} trains one model per shard, which a model store does: `lifelong store "
            "init STORE` then `lifelong update STORE --config CONFIG` (or lifelong.unlearn.ShardedRun from "
            "Python)"
        )
    loggers = build_loggers(cfg.loggers, out)  # first: a missing tensorboard/mlflow fails before any work
    pretrained = _pretrained(cfg)  # a pretrained LM: its tokenizer makes the stream
    stream = stream_for(cfg, tokenizer=None if pretrained is None else pretrained.tokenizer)
    torch.manual_seed(cfg.seed)  # model initialisation
    model = model_for(cfg, stream, pretrained)
    learner = Learner(
        model,
        build_methods(cfg),
        cfg.train,
        run_dir=out,
        seed=cfg.seed,
        progress=progress,
        config=cfg.model_dump(mode="json"),
        loggers=loggers,
    )
    return learner, stream


def model_for(cfg: RunConfig, stream: Any, pretrained: Any = None) -> torch.nn.Module:
    """The model of `cfg` for `stream` (anything with `kind`, `input_shape` and `num_classes`): built from
    its options, or the pretrained language model (`pretrained`, else loaded from where the config says)."""
    if cfg.model.name in ("hf", "smollm2"):
        from lifelong.lm.hf import check_block_size

        model = pretrained if pretrained is not None else _pretrained(cfg, training=False)
        check_block_size(int(stream.input_shape[0]), model)
        return model
    options = cfg.model.model_dump(exclude={"name", "tokenizer", "vocab_size"})
    return build_model(cfg.model.name, stream, **options)


def run_config(
    cfg: RunConfig, out: str | Path | None = None, progress: bool = True, overwrite: bool = False
) -> Results:
    """Train and evaluate the run that `cfg` describes, writing the run directory `out` (replacing the run
    it holds with `overwrite`)."""
    learner, stream = build_learner(cfg, out, progress)
    return learner.run(stream, overwrite=overwrite)


def stream_for(cfg: RunConfig, tokenizer: Any = None) -> Stream:
    """The stream a run trains on: the one its config names (its first `scenario.until` experiences), then
    the data it was continued with, less the training samples of `exclude_ids`."""
    stream = build_stream(cfg, tokenizer)
    until = cfg.scenario.until
    if until is not None:
        if until > len(stream):
            raise ConfigError(
                f"scenario.until is {until} but the scenario has only {len(stream)} experiences; lower it "
                "(or raise scenario.experiences)"
            )
        stream = replace(stream, experiences=stream.experiences[:until])
    sc = cfg.scenario
    if sc.label_fraction is not None or sc.labels_per_class is not None:
        from lifelong.streams.labels import hold_back_labels

        stream = hold_back_labels(stream, sc.label_fraction, sc.labels_per_class, sc.label_bias, sc.seed)
    if cfg.continued and stream.kind == "language_modeling" and tokenizer is None:
        tokenizer = _bpe(cfg, _corpus(cfg))
    for path in cfg.continued:
        if stream.kind == "language_modeling":
            more = _new_text_experiences(cfg, stream, path, tokenizer)
        else:
            more = _new_experiences(cfg, stream, path)
        stream = _appended(stream, more)
    return _excluded(stream, cfg.exclude_ids) if cfg.exclude_ids else stream


def _excluded(stream: Stream, ids: Sequence[str]) -> Stream:
    """`stream` without the training samples whose id is in `ids` (deleted data)."""
    from lifelong.streams.sample_ids import without_ids

    drop = set(ids)
    kept = []
    for e in stream:
        lean, _ = without_ids(e, drop)
        if len(lean.train) == 0:
            raise DataError(
                f"excluding the deleted ids leaves experience {e.id + 1} ({e.domain or e.classes}) with no "
                "training data; a version cannot train on it (drop that experience from the data)"
            )
        kept.append(lean)
    return replace(stream, experiences=kept)


def _new_text_experiences(cfg: RunConfig, stream: Stream, path: str, tokenizer: Any) -> Stream:
    """New text (a file, or a folder of one file or folder per experience) as experiences of the run's
    stream: read with the run's text options, tokenized with its tokenizer into blocks of its size."""
    from lifelong.lm.tokens import token_domains
    from lifelong.streams.text import ByteTokenizer
    from lifelong.streams.text_files import read_text_domains

    sc = cfg.scenario
    corpus = read_text_domains(path, text_column=sc.text_column or "text", encoding=sc.encoding)
    new = token_domains(
        corpus,
        tokenizer if tokenizer is not None else ByteTokenizer(),
        block_size=int(stream.input_shape[0]),
        max_tokens=sc.max_tokens,
        max_test_tokens=sc.max_test_tokens,
        test_fraction=sc.test_fraction,
        seed=sc.seed,
    )
    if new.num_classes != stream.num_classes:
        raise DataError(
            f"{path}: its tokenizer gives {new.num_classes} token ids but the run's model has "
            f"{stream.num_classes}; continue with the tokenizer the run was trained with"
        )
    return new


def _new_experiences(cfg: RunConfig, stream: Stream, path: str) -> Stream:
    """The experiences in `path` (a file, or a folder of one file or folder per experience), read with the
    run's own table options, its class names (in its order) and its feature scaling."""
    if stream.task_classes is not None:
        raise ConfigError(
            "this run's stream has task labels (task-incremental): new files would have none; start a new run"
        )
    sc = cfg.scenario
    # the same table options as the run's own files (a run on a built-in data set: the defaults)
    options: dict[str, Any] = (
        _table_options(cfg) if sc.type == "files" else {"test_fraction": sc.test_fraction, "seed": sc.seed}
    )
    options["label_names"] = list(stream.info.get("label_names") or range(stream.num_classes))
    if stream.info.get("normalizer") is not None:
        options["normalizer"] = stream.info["normalizer"]
    new = from_files(path, **options)
    if tuple(new.input_shape) != tuple(stream.input_shape):
        raise DataError(
            f"{path}: samples have shape {tuple(new.input_shape)} but the run's model takes "
            f"{tuple(stream.input_shape)}; give data with the run's features"
        )
    return new


def _appended(stream: Stream, more: Stream) -> Stream:
    """`stream` followed by the experiences of `more` (numbered on)."""
    n = len(stream)
    experiences = [*stream.experiences, *(replace(e, id=n + i) for i, e in enumerate(more))]
    return Stream(
        name=stream.name,
        experiences=experiences,
        kind=stream.kind,
        num_classes=stream.num_classes,
        input_shape=stream.input_shape,
        single_pass=stream.single_pass,
        info=stream.info,
    )


def _config_of(run_dir: Path, action: str) -> RunConfig:
    """The config of the CLI run in `run_dir`; a clear StateError for anything that is not one."""
    if not (run_dir / "config.json").exists():
        raise StateError(f"{run_dir} is not a lifelong run directory (no config.json); nothing to {action}")
    info_path = run_dir / RUN_INFO
    if info_path.exists() and read_json(info_path, "run information").get("origin") == "python":
        hint = "run(stream, resume=True)" if action == "resume" else "run(longer_stream, extend=True)"
        raise StateError(
            f"the run in {run_dir} was started from Python, so the command line cannot rebuild its model, "
            f"methods and data; {action} it from Python: Learner(model, methods, run_dir=...).{hint}"
        )
    return parse_config(read_json(run_dir / "config.json", "run config"))


def resume(run_dir: str | Path, progress: bool = True) -> Results:
    """Continue the run in `run_dir` from its last checkpoint, to the same end as an unbroken run."""
    run_dir = Path(run_dir)
    cfg = _config_of(run_dir, "resume")
    if (run_dir / "results.json").exists():
        # finished: killed after results.json (e.g. while the report was written), or resumed twice
        if not (run_dir / "report.html").exists():
            from lifelong.evaluation.report import write_report

            write_report(run_dir, plots=False)
        return Results.from_dict(read_json(run_dir / "results.json", "results"))
    learner, stream = build_learner(cfg, run_dir, progress)
    return learner.run(stream, resume=True)


def continue_run(run_dir: str | Path, data: Sequence[str | Path], progress: bool = True) -> Results:
    """Train the finished run in `run_dir` on new data (`data`: files or folders, each read like
    `scenario.path`), from its final state: model, memories and method state. The matrix grows; every
    earlier row is kept. The run's config records the data (`continued`), so a crash is resumed as usual."""
    run_dir = Path(run_dir)
    cfg = _config_of(run_dir, "continue")
    if not data:
        raise ConfigError("give the new data to continue with: --data PATH (a file or folder)")
    paths = [str(Path(d).expanduser().resolve()) for d in data]
    for p in paths:
        if not Path(p).exists():
            raise DataError(f"{p} does not exist; give a file or folder of new data")
    raw = cfg.model_dump(mode="json")
    raw["continued"] = [*cfg.continued, *paths]
    learner, stream = build_learner(parse_config(raw), run_dir, progress)
    return learner.run(stream, extend=True)


__all__ = [
    "build_learner",
    "build_methods",
    "build_stream",
    "continue_run",
    "load_config",
    "resume",
    "run_config",
    "stream_for",
]
