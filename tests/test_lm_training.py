"""Language-model training in the learner and the config: gradient accumulation, gradient checkpointing,
token counts in events and results.json, replay by share of each batch (`Replay(ratio=...)`), and whole
runs through the command line: a list of corpora with a BPE-tokenized GPT, a tiny Hugging Face Llama with
replay killed and resumed then exported, user text files, and configs that must be refused.

Everything is tiny and offline: the corpora are small fake copies of the registered sources written into
$LIFELONG_DATA, the Llama (hidden 32, 2 layers, vocabulary 512) and its BPE are made in a temporary folder,
and the token and tokenizer caches live in a temporary $XDG_CACHE_HOME.
"""

from __future__ import annotations

import json
import os
import random
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from safetensors.torch import load_file
from torch import nn
from typer.testing import CliRunner

from lifelong.cli import app
from lifelong.config import parse_config
from lifelong.errors import ConfigError
from lifelong.learner import Learner
from lifelong.methods import Replay
from lifelong.methods.base import Context, Method
from lifelong.models.gpt import TinyGPT
from lifelong.streams.experience import Experience, Split, Stream

VOCAB, BLOCK = 32, 8

TOPICS = {
    "sea": "ship sail wave harbour anchor tide captain crew storm deck rope island gull salt wind mast",
    "farm": "field barn cow plough harvest wheat orchard fence tractor hay seed rain soil goat hen mill",
    "code": "function return value list index loop error module import class object string parse file test",
    "court": "judge law trial witness verdict jury appeal claim statute counsel motion ruling bench fee",
}


def prose(topic: str, sentences: int, seed: int) -> str:
    """Sentences of words from one topic's list (a domain with a vocabulary of its own)."""
    rng = random.Random(f"{topic}-{seed}")
    words = TOPICS[topic].split()
    out = []
    for _ in range(sentences):
        chosen = [rng.choice(words) for _ in range(rng.randint(5, 11))]
        out.append(" ".join(chosen).capitalize() + rng.choice([".", ".", "!", "?"]))
    return " ".join(out)


@pytest.fixture(autouse=True, scope="module")
def offline_and_tiny(tmp_path_factory):
    """One torch thread (tiny models; bit-identical comparisons need the same count), no hub, caches and
    the fake corpora in temporary folders."""
    root = tmp_path_factory.mktemp("env")
    data = root / "data"
    # fortunes: category files, one fortune per '%'-separated block
    (data / "fortunes").mkdir(parents=True)
    for topic in ("sea", "farm"):
        fortunes = [prose(topic, 4, i) for i in range(60)]
        (data / "fortunes" / topic).write_text("\n%\n".join(fortunes) + "\n%\n")
    # python_docs: reST sources, one document per file
    docs = data / "python_docs"
    (docs / "library").mkdir(parents=True)
    (docs / "contents.rst.txt").write_text(prose("code", 40, 0))
    for i in range(6):
        (docs / "library" / f"mod{i}.rst.txt").write_text(prose("code", 60, i + 1))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("TRANSFORMERS_OFFLINE", "1")
        mp.setenv("XDG_CACHE_HOME", str(root / "cache"))
        mp.setenv("LIFELONG_DATA", str(data))
        mp.setenv("NO_COLOR", "1")
        yield
    torch.set_num_threads(threads)


def invoke(*args: Any):
    return CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "300"})


def write_yaml(folder: Path, raw: dict, name: str = "run.yaml") -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def lm_stream(experiences: int = 2, train_rows: int = 40, test_rows: int = 8, seed: int = 0) -> Stream:
    """Token blocks; experience i draws its tokens from its own slice of the vocabulary, so every row is
    unique (checked) and tells which experience it comes from."""
    g = torch.Generator().manual_seed(seed)
    per = VOCAB // experiences

    def split(i: int, n: int) -> Split:
        spans = torch.randint(i * per, (i + 1) * per, (n, BLOCK + 1), generator=g)
        return Split(spans[:, :-1], spans[:, 1:])

    exps = [
        Experience(id=i, train=split(i, train_rows), test=split(i, test_rows), domain=f"d{i}")
        for i in range(experiences)
    ]
    rows = [tuple(r.tolist()) for e in exps for r in e.train.x]
    assert len(set(rows)) == len(rows)
    return Stream("toy-lm", exps, "language_modeling", VOCAB, (BLOCK,))


def tiny_gpt(dropout: float = 0.0) -> TinyGPT:
    torch.manual_seed(0)
    return TinyGPT(VOCAB, BLOCK, n_layer=1, n_head=2, n_embd=16, dropout=dropout)


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def read_events(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]


def final_checkpoint(run_dir: Path) -> dict[str, dict[str, torch.Tensor]]:
    latest = json.loads((run_dir / "checkpoints" / "LATEST.json").read_text())
    folder = run_dir / "checkpoints" / latest["checkpoint"]
    return {p.name: load_file(p) for p in sorted(folder.glob("*.safetensors"))}


class Grads(Method):
    """The gradients of every step (after all its mini-batches) and the rows of every mini-batch."""

    name = "grads"

    def __init__(self) -> None:
        self.steps: list[dict[str, torch.Tensor]] = []
        self.batches: list[Split] = []

    def batch(self, ctx: Context, batch: Split) -> Split:
        self.batches.append(batch)
        return batch

    def after_backward(self, ctx: Context) -> None:
        self.steps.append({n: p.grad.clone() for n, p in ctx.model.named_parameters() if p.grad is not None})


class Batches(Method):
    """The rows of every mini-batch as the loop trains them (after the methods before this one)."""

    name = "batches"

    def __init__(self) -> None:
        self.seen: list[tuple[int, list[tuple[int, ...]]]] = []  # (experience, rows)

    def batch(self, ctx: Context, batch: Split) -> Split:
        self.seen.append((ctx.index, [tuple(r.tolist()) for r in batch.x]))
        return batch


# --- gradient accumulation ----------------------------------------------------------------------------------


def one_step(batch_size: int, accum: int, rows: int = 8) -> tuple[Grads, nn.Module, dict]:
    stream = lm_stream(experiences=1, train_rows=rows)
    grads = Grads()
    model = tiny_gpt()
    learner = Learner(
        model, [grads], batch_size=batch_size, grad_accum=accum, lr=0.5, log_every=1, progress=False
    )
    results = learner.run(stream)
    return grads, model, results.to_dict()


def test_grad_accum_equals_one_large_batch():
    """8 blocks as one batch, as 2 x 4 and as 4 x 2 accumulated: one step with the same mean gradient
    (each mini-batch's loss is divided by the number of mini-batches), so the same weights."""
    big, big_model, big_results = one_step(batch_size=8, accum=1)
    assert big_results["experience_steps"] == [1]
    for batch_size, accum in ((4, 2), (2, 4)):
        small, model, results = one_step(batch_size, accum)
        assert results["experience_steps"] == [1]  # a step takes `accum` mini-batches
        assert [len(b) for b in small.batches] == [batch_size] * accum
        assert len(small.steps) == 1
        for name, g in big.steps[0].items():
            torch.testing.assert_close(small.steps[0][name], g, rtol=1e-4, atol=1e-6)
        for name, w in big_model.state_dict().items():
            torch.testing.assert_close(model.state_dict()[name], w, rtol=1e-4, atol=1e-6)
        assert results["tokens_seen"] == big_results["tokens_seen"] == [64]
    assert float(big.steps[0]["tok.weight"].abs().sum()) > 0


def test_a_step_with_a_short_mini_batch_equals_one_batch_of_its_samples():
    accumulated, _, _ = one_step(batch_size=8, accum=2, rows=12)
    whole, _, _ = one_step(batch_size=12, accum=1, rows=12)
    for name, g in whole.steps[0].items():
        torch.testing.assert_close(accumulated.steps[0][name], g, rtol=1e-4, atol=1e-6)


# --- gradient checkpointing ---------------------------------------------------------------------------------


def test_gradient_checkpointing_trains_the_tiny_gpt_to_the_same_weights():
    stream = lm_stream(experiences=2, train_rows=16)
    plain, checkpointed = tiny_gpt(), tiny_gpt()
    Learner(plain, batch_size=8, lr=0.05, optimizer="adam", progress=False).run(stream)
    Learner(
        checkpointed, batch_size=8, lr=0.05, optimizer="adam", gradient_checkpointing=True, progress=False
    ).run(stream)
    assert checkpointed.checkpointing and not plain.checkpointing
    for name, w in plain.state_dict().items():
        torch.testing.assert_close(checkpointed.state_dict()[name], w, rtol=1e-5, atol=1e-7)


class PlainLM(nn.Module):
    """A language model of one's own, without gradient_checkpointing_enable()."""

    def __init__(self) -> None:
        super().__init__()
        self.emb, self.out = nn.Embedding(VOCAB, 8), nn.Linear(8, VOCAB)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.emb(x))


def test_gradient_checkpointing_on_a_model_without_it_names_the_fix():
    with pytest.raises(ConfigError) as err:
        Learner(PlainLM(), gradient_checkpointing=True, progress=False).run(lm_stream())
    message = str(err.value)
    assert "train.gradient_checkpointing: PlainLM has no gradient_checkpointing_enable()" in message
    assert "torch.utils.checkpoint" in message and "gradient_checkpointing: false" in message


def test_gradient_checkpointing_refused_before_anything_is_written(tmp_path):
    with pytest.raises(ConfigError):
        Learner(PlainLM(), gradient_checkpointing=True, run_dir=tmp_path / "run", progress=False).run(
            lm_stream()
        )
    assert not (tmp_path / "run").exists()


# --- tokens in events and results.json ----------------------------------------------------------------------


def test_tokens_are_counted_in_events_and_results(tmp_path):
    stream = lm_stream(experiences=2, train_rows=36)  # batches of 8, 8, 8, 8, 4 blocks of 8 tokens
    run_dir = tmp_path / "run"
    Learner(
        tiny_gpt(),
        epochs=2,
        batch_size=8,
        lr=0.01,
        log_every=1,
        eval_every=4,
        run_dir=run_dir,
        progress=False,
    ).run(stream)
    results = json.loads((run_dir / "results.json").read_text())
    per_experience = 2 * 36 * BLOCK  # epochs x blocks x tokens
    assert results["tokens_seen"] == [per_experience, per_experience]
    assert results["experience_steps"] == [10, 10]
    assert results["schedule"] == "constant"
    assert len(results["tokens_per_second"]) == 2 and all(t > 0 for t in results["tokens_per_second"])
    assert isinstance(results["peak_memory_bytes"], int) and results["peak_memory_bytes"] > 10_000_000
    events = read_events(run_dir)
    by_step = {1: 64, 4: 256, 5: 288, 6: 352, 10: 576, 14: 576 + 256, 20: 1152}
    train = {e["step"]: e["tokens"] for e in events if e["event"] == "train"}
    assert len(train) == 20 and all(train[s] == t for s, t in by_step.items())
    evals = {e["step"]: e["tokens"] for e in events if e["event"] == "eval"}
    assert evals == {s: train[s] for s in (4, 8, 12, 16, 20)}
    ends = [e["tokens"] for e in events if e["event"] == "experience_end"]
    assert ends == [per_experience, 2 * per_experience]


def test_classification_runs_count_no_tokens(tmp_path):
    g = torch.Generator().manual_seed(0)

    def split(n: int) -> Split:
        return Split(torch.randn(n, 4, generator=g), torch.randint(0, 2, (n,), generator=g))

    stream = Stream("toy", [Experience(0, split(32), split(8), classes=[0, 1])], "classification", 2, (4,))
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 2))
    Learner(model, batch_size=8, log_every=1, run_dir=tmp_path / "run", progress=False).run(stream)
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert not {"tokens_seen", "tokens_per_second", "peak_memory_bytes", "experience_steps"} & set(results)
    assert not any("tokens" in e for e in read_events(tmp_path / "run"))


# --- replay by share of each batch --------------------------------------------------------------------------


def owner(stream: Stream) -> dict[tuple[int, ...], int]:
    """Row -> the experience whose training data holds it."""
    return {tuple(r.tolist()): e.id for e in stream for r in e.train.x}


def test_replay_ratio_from_the_stream_keeps_the_batch_size_and_an_exact_share():
    stream = lm_stream(experiences=3)  # 40 rows each: 5 batches of 8
    replay, batches = Replay(ratio=0.3, source="stream"), Batches()
    results = Learner(tiny_gpt(), [replay, batches], batch_size=8, lr=0.01, progress=False).run(stream)
    where = owner(stream)
    assert [len(rows) for _, rows in batches.seen] == [8] * 15  # replaced, not added
    offered = replayed = 0
    for i, rows in batches.seen:
        old = [r for r in rows if where[r] != i]
        assert all(where[r] < i for r in old)  # only earlier experiences' training data
        assert all(where[r] == i for r in rows[: len(rows) - len(old)])  # fresh rows first, then replayed
        if i == 0:
            assert old == []  # nothing earlier to replay
            continue
        offered, replayed = offered + len(rows), replayed + len(old)
        assert replayed == round(0.3 * offered)  # the running share is exact after every batch
    assert (offered, replayed) == (80, 24)
    assert (replay.offered, replay.replayed) == (80, 24)
    # the third experience replays from both earlier ones
    assert {where[r] for i, rows in batches.seen if i == 2 for r in rows if where[r] != 2} == {0, 1}
    # no samples are stored: the state is two counters and an empty memory
    state = replay.state_dict()
    assert len(replay.memory) == 0 and "memory.x" not in state and "memory.y" not in state
    assert (state["offered"], state["replayed"]) == (80, 24)
    assert results.tokens_seen == [40 * BLOCK] * 3  # the replayed blocks replace, so the budget is kept


def test_replay_ratio_from_memory_replays_only_rows_trained_before():
    stream = lm_stream(experiences=3)
    replay, batches = Replay(memory=30, ratio=0.25), Batches()
    Learner(tiny_gpt(), [replay, batches], batch_size=8, lr=0.01, progress=False).run(stream)
    where = owner(stream)
    trained: set[tuple[int, ...]] = set()
    replayed = 0
    for i, rows in batches.seen:
        assert len(rows) == 8
        counts = Counter(rows)
        repeats = [r for r in rows if r in trained]
        assert all(where[r] <= i for r in rows)  # never data of a later experience
        assert all(counts[r] == 1 for r in rows)  # distinct samples in a batch
        fresh = [r for r in rows if r not in trained]
        assert all(where[r] == i for r in fresh)
        replayed += len(repeats)
        trained.update(rows)
    assert replayed == replay.replayed == round(0.25 * replay.offered)
    # every batch after the first experience: by share, the memory holds earlier experiences only
    assert replay.offered == 10 * 8
    assert len(replay.memory) == 30  # filled with the trained blocks


def test_replay_ratio_from_memory_replays_earlier_experiences_only():
    stream = lm_stream(experiences=2)
    batches = Batches()
    Learner(tiny_gpt(), [Replay(memory=30, ratio=0.25), batches], batch_size=8, progress=False).run(stream)
    first = [r for i, rows in batches.seen if i == 0 for r in rows]
    assert len(set(first)) == len(first) == 40  # nothing is earlier than the first experience: all fresh


def test_replay_ratio_keeps_the_batch_size_with_a_small_memory():
    batches = Batches()
    Learner(tiny_gpt(), [Replay(memory=2, ratio=0.5), batches], batch_size=8, progress=False).run(lm_stream())
    assert [len(rows) for _, rows in batches.seen] == [8] * 10


def test_memory_tokens_sizes_the_memory_in_blocks():
    stream = lm_stream()  # blocks of 8 tokens
    replay = Replay(memory_tokens=100, ratio=0.25)
    Learner(tiny_gpt(), [replay], batch_size=8, progress=False).run(stream)
    assert replay.memory_size == 12 and replay.params()["memory_tokens"] == 100  # 100 // 8 blocks
    assert len(replay.memory) == 12
    assert replay.state_dict()["memory.x"].shape == (12, BLOCK)


def test_a_run_with_memory_tokens_loads_for_inference(tmp_path):
    import lifelong

    Learner(tiny_gpt(), [Replay(memory_tokens=64, ratio=0.25)], run_dir=tmp_path / "run", progress=False).run(
        lm_stream()
    )
    trained = lifelong.load(
        tmp_path / "run", model=tiny_gpt(), methods=[Replay(memory_tokens=64, ratio=0.25)]
    )
    weights = final_checkpoint(tmp_path / "run")["model.safetensors"]
    assert all(torch.equal(trained.model.state_dict()[k], v) for k, v in weights.items())


@pytest.mark.parametrize(
    ("options", "stream", "message"),
    [
        ({"memory_tokens": 7}, "lm", "memory_tokens=7 holds no block of 8 tokens; give at least 8"),
        (
            {"memory_tokens": 64},
            "classification",
            "memory_tokens is a budget for token blocks; give `memory`",
        ),
    ],
)
def test_memory_tokens_errors_when_the_run_starts(tmp_path, options, stream, message):
    if stream == "lm":
        data, model = lm_stream(), tiny_gpt()
    else:
        split = Split(torch.randn(16, 4), torch.arange(16) % 2)
        data = Stream("toy", [Experience(0, split, split, classes=[0, 1])], "classification", 2, (4,))
        model = nn.Linear(4, 2)
    with pytest.raises(ConfigError, match=message):
        Learner(model, [Replay(**options)], run_dir=tmp_path / "run", progress=False).run(data)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"ratio": 0.1, "batch_size": 4}, "either `ratio` .* or `batch_size` .*, not both"),
        ({"ratio": 1.0}, "between 0 and 1, got 1.0"),
        ({"ratio": 0.0}, "between 0 and 1, got 0.0"),
        ({"memory_tokens": 0}, "memory_tokens must be at least 1"),
        ({"source": "stream", "memory_tokens": 64}, "source 'stream' .* drop those options"),
        ({"source": "disk"}, "unknown replay source 'disk'"),
    ],
)
def test_replay_options_that_cannot_work_are_refused(options, message):
    with pytest.raises(ConfigError, match=message):
        Replay(**options)


def test_replay_ratio_with_batch_size_is_refused_in_a_config():
    raw = {
        "data": {"name": "fortunes"},
        "scenario": {"type": "domains"},
        "model": {"name": "gpt"},
        "method": {"name": "replay", "ratio": 0.05, "batch_size": 8},
    }
    with pytest.raises(ConfigError, match=r"`method`: give either `ratio` .* or `batch_size` .*, not both"):
        parse_config(raw)
    raw["method"] = {"name": "replay", "source": "stream", "memory_tokens": 512}
    with pytest.raises(ConfigError, match="source 'stream' has no memory: drop `memory_tokens`"):
        parse_config(raw)
    raw["method"] = {"name": "replay", "ratio": 0.05}
    assert parse_config(raw).methods[0].ratio == 0.05


# --- whole runs through the command line --------------------------------------------------------------------


def test_a_list_of_corpora_with_token_budgets_and_a_bpe_gpt(tmp_path):
    config = write_yaml(
        tmp_path,
        {
            "data": {"name": ["fortunes", "python_docs"]},
            "scenario": {"type": "domains", "block_size": 32, "max_tokens": 4000, "max_test_tokens": 640},
            "model": {
                "name": "gpt",
                "n_layer": 1,
                "n_head": 2,
                "n_embd": 32,
                "tokenizer": "bpe",
                "vocab_size": 300,
            },
            "train": {
                "epochs": 1,
                "batch_size": 16,
                "lr": 0.003,
                "optimizer": "adamw",
                "scheduler": "cosine",
                "min_lr": 0.0003,
                "warmup_steps": 2,
                "grad_accum": 2,
                "log_every": 1,
            },
        },
    )
    result = invoke("run", config, "--out", tmp_path / "run", "--no-progress")
    assert result.exit_code == 0, result.output
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["experience_names"] == ["fortunes", "python_docs"]  # one domain per corpus, in order
    assert results["tokens_seen"] == [4000, 4000]  # 125 blocks of 32 tokens each
    assert results["experience_steps"] == [4, 4]  # ceil(ceil(125 / 16) / 2)
    assert results["schedule"] == "cosine"
    assert all(v > 1 for row in results["matrix"] for v in row)  # perplexities
    weights = final_checkpoint(tmp_path / "run")["model.safetensors"]
    assert weights["tok.weight"].shape == (300, 32)  # the BPE's vocabulary
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert [e["test"] for e in run["stream"]["experiences"]] == [20, 20]  # 640 test tokens: 20 blocks
    cache = Path(os.environ["XDG_CACHE_HOME"]) / "lifelong"  # the BPE and the tokens: temporary caches
    assert list((cache / "tokenizers").glob("*/tokenizer.json")) and list((cache / "tokens").glob("*/*.npy"))


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory) -> Path:
    """A random Llama (hidden 32, 2 layers, vocabulary 512, 128 positions) and a BPE saved as a model
    folder, as `save_pretrained` writes it."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from lifelong.lm.bpe import train_bpe

    folder = tmp_path_factory.mktemp("tiny-llama")
    docs = [prose(topic, 30, i) for topic in TOPICS for i in range(4)]
    tok = train_bpe(docs, vocab_size=512, cache_dir=folder / "bpe-cache")
    assert len(tok) <= 512
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=512,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        eos_token_id=tok.eos_token_id,
        bos_token_id=tok.eos_token_id,
        tie_word_embeddings=True,
    )
    model_dir = folder / "model"
    LlamaForCausalLM(config).save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    return model_dir


def text_folder(folder: Path, suffix: str = ".txt", column: str | None = None) -> Path:
    """Three domains in time order, one file each: .txt documents, or JSONL / CSV rows in `column`."""
    folder.mkdir()
    for n, topic in enumerate(("sea", "farm", "court")):
        docs = [prose(topic, 12, i) for i in range(10)]
        path = folder / f"2024-0{n + 1}-{topic}{suffix}"
        if suffix == ".txt":
            path.write_text("\n\n".join(docs))
        elif suffix == ".jsonl":
            path.write_text("".join(json.dumps({"id": i, column: d}) + "\n" for i, d in enumerate(docs)))
        else:
            import pandas as pd

            pd.DataFrame({"id": range(len(docs)), column: docs}).to_csv(path, index=False)
    return folder


HF_TRAIN = {
    "epochs": 1,
    "batch_size": 4,
    "grad_accum": 2,
    "lr": 0.003,
    "optimizer": "adamw",
    "scheduler": "cosine",
    "min_lr": 0.0003,
    "warmup_steps": 2,
    "checkpoint_every": 2,
    "eval_every": 3,
    "log_every": 1,
}


@pytest.fixture(scope="module")
def hf_runs(tmp_path_factory, tiny_llama) -> dict[str, Any]:
    """The tiny Llama on three text files with replay by share: once unbroken, once stopped right after a
    checkpoint in the middle of the second experience and resumed with `lifelong resume`."""
    folder = tmp_path_factory.mktemp("hf")
    config = write_yaml(
        folder,
        {
            "scenario": {"type": "files", "path": str(text_folder(folder / "texts")), "block_size": 32},
            "model": {"name": "hf", "path": str(tiny_llama)},
            "method": {"name": "replay", "ratio": 0.25, "memory": 20},
            "train": HF_TRAIN,
            "seed": 0,
        },
    )
    unbroken = invoke("run", config, "--out", folder / "unbroken", "--no-progress")
    assert unbroken.exit_code == 0, unbroken.output

    original = Learner._checkpoint
    stops: list[str] = []

    def checkpoint_then_stop(self, p, began, name):
        original(self, p, began, name)
        if not stops and p["experience"] == 1 and (p["epoch"] or p["batch"]):  # inside experience 2
            stops.append(name)
            raise KeyboardInterrupt

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Learner, "_checkpoint", checkpoint_then_stop)
        killed = invoke("run", config, "--out", folder / "killed", "--no-progress")
    resumed = invoke("resume", folder / "killed", "--no-progress")
    return {"dir": folder, "killed": killed, "resumed": resumed, "stops": stops, "model": tiny_llama}


def test_hf_llama_with_replay_ratio_killed_and_resumed_equals_unbroken(hf_runs):
    folder = hf_runs["dir"]
    assert hf_runs["killed"].exit_code == 130, hf_runs["killed"].output
    assert "interrupted: resume with `lifelong resume" in hf_runs["killed"].output
    assert hf_runs["stops"] and hf_runs["stops"][0].startswith("step-")
    assert hf_runs["resumed"].exit_code == 0, hf_runs["resumed"].output
    resumes = [e for e in read_events(folder / "killed") if e["event"] == "resume"]
    assert len(resumes) == 1 and resumes[0]["experience"] == 1 and resumes[0]["step"] > 0  # mid-experience

    a = json.loads((folder / "unbroken" / "results.json").read_text())
    b = json.loads((folder / "killed" / "results.json").read_text())
    assert a["method"] == "replay" and len(a["matrix"]) == 3
    assert sum(a["experience_steps"]) > 6  # several steps per experience: the stop was mid-experience
    for key in ("matrix", "initial", "summary", "stability_gap", "tokens_seen", "experience_steps"):
        assert b[key] == a[key], key
    ckpt_a, ckpt_b = final_checkpoint(folder / "unbroken"), final_checkpoint(folder / "killed")
    assert ckpt_a.keys() == ckpt_b.keys()
    for name in ckpt_a:
        for key, tensor in ckpt_a[name].items():
            assert torch.equal(ckpt_b[name][key], tensor), (name, key)
    replay = next(
        json.loads(p.read_text()) for p in (folder / "killed" / "checkpoints").glob("*/method-0-*.json")
    )
    assert replay["replayed"] == round(0.25 * replay["offered"]) and replay["replayed"] > 0
    assert replay["memory.capacity"] == replay["memory.size"] == 20


# transformers 5 deprecates the name lifelong's CausalLM calls (reported; the behaviour is what is tested)
@pytest.mark.filterwarnings("ignore:`gradient_checkpointing_enable` is deprecated:FutureWarning")
def test_gradient_checkpointing_trains_a_hugging_face_model_to_the_same_weights(tiny_llama):
    from lifelong.lm.hf import load_causal_lm

    stream = lm_stream(experiences=1, train_rows=16)  # token ids below 32: inside the Llama's vocabulary
    plain, checkpointed = load_causal_lm(tiny_llama), load_causal_lm(tiny_llama)
    Learner(plain, batch_size=8, lr=0.01, optimizer="adamw", progress=False).run(stream)
    Learner(
        checkpointed, batch_size=8, lr=0.01, optimizer="adamw", gradient_checkpointing=True, progress=False
    ).run(stream)
    # transformers 5 renamed the flag (the old name warns), 4 has only the old one
    flag = next(
        f for f in ("is_activation_checkpointing", "is_gradient_checkpointing") if hasattr(plain.model, f)
    )
    assert getattr(checkpointed.model, flag) and not getattr(plain.model, flag)
    initial = load_causal_lm(tiny_llama).state_dict()
    for name, w in plain.state_dict().items():
        torch.testing.assert_close(checkpointed.state_dict()[name], w, rtol=1e-5, atol=1e-7)
    assert not torch.equal(
        plain.state_dict()["model.model.embed_tokens.weight"], initial["model.model.embed_tokens.weight"]
    )


def test_export_of_the_hf_run_loads_with_transformers(hf_runs, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run_dir = hf_runs["dir"] / "killed"
    result = invoke("export", run_dir, tmp_path / "exported")
    assert result.exit_code == 0, result.output
    assert "exported to" in result.output
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "exported")
    trained = final_checkpoint(run_dir)["model.safetensors"]
    exported = model.state_dict()
    compared = 0
    for key, tensor in trained.items():
        name = key.removeprefix("model.")  # the learner's wrapper holds the transformers model as `model`
        assert torch.equal(exported[name], tensor), key
        compared += 1
    assert compared >= 10
    initial = AutoModelForCausalLM.from_pretrained(hf_runs["model"]).state_dict()
    assert not torch.equal(initial["model.embed_tokens.weight"], exported["model.embed_tokens.weight"])
    tok = AutoTokenizer.from_pretrained(tmp_path / "exported")
    assert len(tok) == len(AutoTokenizer.from_pretrained(hf_runs["model"]))
    info = json.loads((tmp_path / "exported" / "lifelong_export.json").read_text())
    latest = json.loads((run_dir / "checkpoints" / "LATEST.json").read_text())["checkpoint"]
    assert (info["run_dir"], info["checkpoint"], info["experiences_done"]) == (str(run_dir), latest, 3)
    logits = model(torch.tensor([tok.encode("ship sail wave")])).logits
    assert logits.shape[-1] == 512 and torch.isfinite(logits).all()


@pytest.mark.parametrize(("suffix", "column"), [(".jsonl", "body"), (".csv", "content")])
def test_a_text_files_run_with_a_text_column(tmp_path, suffix, column):
    texts = text_folder(tmp_path / "texts", suffix, column)
    config = write_yaml(
        tmp_path,
        {
            "scenario": {"type": "files", "path": str(texts), "text_column": column, "block_size": 16},
            "model": {"name": "gpt", "n_layer": 1, "n_head": 2, "n_embd": 32},
            "method": {"name": "replay", "ratio": 0.1, "memory_tokens": 160},
            "train": {"epochs": 1, "batch_size": 16, "lr": 0.003, "optimizer": "adamw", "log_every": 2},
        },
    )
    result = invoke("run", config, "--out", tmp_path / "run", "--no-progress")
    assert result.exit_code == 0, result.output
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["metric"] == "perplexity"
    assert results["experience_names"] == ["2024-01-sea", "2024-02-farm", "2024-03-court"]
    assert len(results["tokens_seen"]) == 3 and all(t > 0 and t % 16 == 0 for t in results["tokens_seen"])
    assert final_checkpoint(tmp_path / "run")["model.safetensors"]["tok.weight"].shape == (256, 32)  # bytes
    checkpoints = tmp_path / "run" / "checkpoints"
    replay = json.loads(next(checkpoints.glob("*/method-0-replay.json")).read_text())
    assert replay["memory.capacity"] == 10  # memory_tokens 160 // block_size 16


def test_a_missing_text_column_names_the_columns(tmp_path):
    texts = text_folder(tmp_path / "texts", ".jsonl", "body")
    config = write_yaml(
        tmp_path,
        {
            "scenario": {"type": "files", "path": str(texts), "text_column": "text"},
            "model": {"name": "gpt", "n_layer": 1, "n_head": 2, "n_embd": 32},
        },
    )
    result = invoke("run", config, "--out", tmp_path / "run", "--no-progress")
    assert result.exit_code == 2
    message = " ".join(result.output.split())
    assert "has no column 'text'; its columns are ['id', 'body']" in message
    assert "text_column: body" in message
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (
            {
                "data": {"name": "digits"},
                "scenario": {"type": "class_incremental", "experiences": 2},
                "model": {"name": "gpt"},
            },
            "model 'gpt' is a language model: it goes with text",
        ),
        (
            {
                "data": {"name": "digits"},
                "scenario": {"type": "class_incremental", "experiences": 2, "max_tokens": 4000},
                "model": {"name": "mlp"},
            },
            "`scenario.max_tokens` is a token budget for text streams",
        ),
        (
            {
                "data": {"name": "fortunes"},
                "scenario": {"type": "domains"},
                "model": {"name": "mlp"},
            },
            "model 'mlp' cannot model text: use model 'gpt', 'hf' or 'smollm2'",
        ),
        (
            {
                "data": {"name": "fortunes"},
                "scenario": {"type": "domains", "block_size": 16},
                "model": {"name": "hf", "path": "/no/such/folder/llama"},
            },
            "/no/such/folder/llama does not exist; point the model path at a folder saved with",
        ),
        (
            {
                "data": {"name": "fortunes"},
                "scenario": {"type": "domains", "block_size": 16},
                "model": {"name": "hf", "path": "someone/no-such-model"},
            },
            "'someone/no-such-model' is neither a folder on this machine nor a model that can be loaded",
        ),
    ],
    ids=["gpt-on-images", "max-tokens-on-images", "mlp-on-text", "hf-path-missing", "hf-hub-id-offline"],
)
def test_configs_that_cannot_work_are_refused_before_anything_is_written(tmp_path, raw, message):
    config = write_yaml(tmp_path, raw)
    result = invoke("run", config, "--out", tmp_path / "run", "--no-progress")
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())
    assert not (tmp_path / "run").exists()
