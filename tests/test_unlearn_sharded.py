"""Exact deletion by sharded, sliced training (lifelong.unlearn.sharded).

The key property: after `forget(ids)` every shard's weights, the ensemble's predictions and its matrix are
bit-identical to `ShardedRun.train` on the stream with those ids removed from the start. Also: replay memories
are rebuilt without the deleted samples, only the affected shards and slices are retrained, deleted ids stay
deleted when the run is reopened or extended, a crash leaves the old state or the new one, bad input changes
nothing. Tiny MLPs on random tensors, CPU.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

from lifelong import state as st
from lifelong.errors import ConfigError, DataError, StateError
from lifelong.methods import Replay
from lifelong.models import MLP
from lifelong.streams.experience import Experience, Split, Stream
from lifelong.streams.sample_ids import content_ids, sample_ids, without_ids
from lifelong.training import TrainConfig
from lifelong.unlearn import ShardedRun, shard_of
from lifelong.unlearn import sharded as sharded_module

SHARDS = 3
TRAIN = TrainConfig(epochs=2, batch_size=8, lr=0.05, log_every=None)


def build() -> tuple[torch.nn.Module, list]:
    return MLP((8,), 4, hidden=(16,)), [Replay(memory=8)]


def toy_stream(experiences: int = 3, seed: int = 0) -> Stream:
    g = torch.Generator().manual_seed(seed)
    exps = []
    for i in range(experiences):
        x, y = torch.randn(36, 8, generator=g), torch.randint(0, 4, (36,), generator=g)
        xt, yt = torch.randn(12, 8, generator=g), torch.randint(0, 4, (12,), generator=g)
        exps.append(Experience(i, Split(x, y), Split(xt, yt), classes=[0, 1, 2, 3]))
    return Stream("toy", exps, "classification", 4, (8,))


def removed(stream: Stream, ids: set[str], keep: int | None = None) -> Stream:
    """`stream` (its first `keep` experiences) with the training samples `ids` removed from the start."""
    exps = [without_ids(e, ids)[0] for e in stream.experiences[:keep]]
    return Stream(stream.name, exps, stream.kind, stream.num_classes, stream.input_shape)


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return st.read_checkpoint(run_dir)["model"]


def memory_ids(run_dir: Path) -> list[str]:
    (name, state), = st.read_checkpoint(run_dir)["methods"]
    assert name == "replay"
    size = int(state["memory.size"])
    return content_ids(Split(state["memory.x"][:size], state["memory.y"][:size]))


def assert_same(a: ShardedRun, b: ShardedRun, x: torch.Tensor) -> None:
    for k in range(SHARDS):
        assert a.shard_dir(k).exists() == b.shard_dir(k).exists()
        if a.shard_dir(k).exists():
            wa, wb = weights(a.shard_dir(k)), weights(b.shard_dir(k))
            assert wa.keys() == wb.keys() and all(torch.equal(wa[n], wb[n]) for n in wa), f"shard {k}"
            for g in range(a.experiences):
                snap_a, snap_b = a.shard_dir(k) / "slices" / str(g), b.shard_dir(k) / "slices" / str(g)
                assert snap_a.exists() == snap_b.exists(), (k, g)
    assert torch.equal(a.scores(x), b.scores(x))
    assert a.meta["ensemble"]["matrix"] == b.meta["ensemble"]["matrix"]
    assert a.meta["sizes"] == b.meta["sizes"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # tiny models: a second thread only adds contention on the shared 2-core machine
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sharded") / "run"
    ShardedRun.train(out, toy_stream(), build, TRAIN, shards=SHARDS)
    return out


@pytest.fixture
def run_copy(trained: Path, tmp_path: Path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(trained, out)
    return out


def test_shard_assignment_depends_on_the_id_alone():
    assert [shard_of(f"id-{i}", 4) for i in range(200)] == [shard_of(f"id-{i}", 4) for i in range(200)]
    assert {shard_of(f"id-{i}", 4) for i in range(200)} == {0, 1, 2, 3}
    assert all(shard_of(f"id-{i}", 1) == 0 for i in range(20))


def test_train_writes_shards_snapshots_and_the_ensemble(trained: Path):
    stream = toy_stream()
    run = ShardedRun.open(trained, stream, build)
    sizes = run.meta["sizes"]
    assert [sum(col) for col in zip(*sizes, strict=True)] == [36, 36, 36]  # each sample in exactly one shard
    for k in range(SHARDS):
        assert sorted(os.listdir(run.shard_dir(k) / "slices")) == ["0", "1", "2"]
        ids = set(run.shard_ids(k))
        assert all(shard_of(i, SHARDS) == k for i in ids) and len(ids) == sum(sizes[k])
    matrix = run.meta["ensemble"]["matrix"]
    assert len(matrix) == 3 and matrix[0][1:] == [None, None] and all(v is not None for v in matrix[2])
    probs = run.scores(stream[0].test.x)
    assert probs.shape == (12, 4) and torch.allclose(probs.sum(dim=1), torch.ones(12))
    assert torch.equal(run.predict(stream[0].test.x), probs.argmax(dim=1))
    assert run.meta["log"][0]["event"] == "train"


def test_forget_equals_retraining_without_the_ids(run_copy: Path, tmp_path: Path):
    stream = toy_stream()
    run = ShardedRun.open(run_copy, stream, build)
    # two samples held in shard 0's replay memory (from its first slice) and one from the last experience
    first_ids = set(sample_ids(stream[0]))
    in_memory = [i for i in memory_ids(run.shard_dir(0)) if i in first_ids][:2]
    assert len(in_memory) == 2
    last = next(i for i in sample_ids(stream[2]) if shard_of(i, SHARDS) != 0)
    ids = {*in_memory, last}
    record = run.forget(ids)

    assert record["ids"] == sorted(ids) and record["already_deleted"] == 0
    retrained = record["shards"]
    assert retrained["0"]["from_experience"] == 0 and retrained["0"]["slices"] == [0, 1, 2]
    other = str(shard_of(last, SHARDS))
    assert retrained[other] == {**retrained[other], "from_experience": 2, "slices": [2]}
    assert set(retrained) == {"0", other}  # the third shard is untouched

    reference = ShardedRun.train(tmp_path / "reference", removed(stream, ids), build, TRAIN, shards=SHARDS)
    assert_same(run, reference, torch.cat([e.test.x for e in stream]))
    assert not set(memory_ids(run.shard_dir(0))) & ids and memory_ids(run.shard_dir(0))
    for k in range(SHARDS):
        assert not set(run.shard_ids(k)) & ids
    assert not (run_copy / ".pending").exists() and not (run_copy / ".old").exists()


def test_deleted_ids_stay_deleted_when_reopened_and_extended(run_copy: Path, tmp_path: Path):
    stream = toy_stream()
    ids = set(sample_ids(stream[1])[:2])
    ShardedRun.open(run_copy, stream, build).forget(ids)

    reopened = ShardedRun.open(run_copy, stream, build)  # the original stream: the ids are in it again
    assert reopened.deleted == ids
    again = reopened.forget(ids)
    assert again["shards"] == {} and again["already_deleted"] == 2
    ShardedRun.open(run_copy, removed(stream, ids), build)  # data with the samples physically gone: fine too

    longer = toy_stream(experiences=4)  # same first three experiences, one new
    record = reopened.extend(longer)
    assert record["event"] == "extend" and reopened.experiences == 4
    reference = ShardedRun.train(tmp_path / "reference", removed(longer, ids), build, TRAIN, shards=SHARDS)
    assert_same(reopened, reference, longer[3].test.x)


def test_a_shard_without_samples_of_an_experience_skips_that_slice(tmp_path: Path):
    # with the data's own ids, the shards are known in advance: experience 1 gives shard 1 nothing
    def ids_for(shard: int | None, count: int, prefix: str) -> list[str]:
        found, i = [], 0
        while len(found) < count:
            if shard is None or shard_of(f"{prefix}{i}", 2) == shard:
                found.append(f"{prefix}{i}")
            i += 1
        return found

    g = torch.Generator().manual_seed(1)
    exps = []
    for e, owner in enumerate((None, 0, None)):
        x, y = torch.randn(24, 8, generator=g), torch.randint(0, 4, (24,), generator=g)
        test = Split(torch.randn(8, 8, generator=g), torch.randint(0, 4, (8,), generator=g))
        info = {"ids": {"train": ids_for(owner, 24, f"e{e}-"), "test": [f"t{e}-{i}" for i in range(8)]}}
        exps.append(Experience(e, Split(x, y), test, classes=[0, 1, 2, 3], info=info))
    stream = Stream("owned", exps, "classification", 4, (8,))

    def build2() -> tuple[torch.nn.Module, list]:
        return MLP((8,), 4, hidden=(16,)), []

    run = ShardedRun.train(tmp_path / "a", stream, build2, TRAIN, shards=2)
    assert run.meta["sizes"][1][1] == 0
    assert (run.shard_dir(1) / "slices" / "1").exists()  # the previous state, kept as this slice's
    w0, w1 = weights(run.shard_dir(1) / "slices" / "0"), weights(run.shard_dir(1) / "slices" / "1")
    assert all(torch.equal(w0[n], w1[n]) for n in w0)
    # deleting every sample shard 1 had in experience 0: it starts at experience 2 now
    gone = {i for i in stream[0].info["ids"]["train"] if shard_of(i, 2) == 1}
    record = run.forget(gone)
    assert record["shards"]["1"]["slices"] == [2]
    reference = ShardedRun.train(tmp_path / "b", removed(stream, gone), build2, TRAIN, shards=2)
    assert not (run.shard_dir(1) / "slices" / "0").exists()
    for k in range(2):
        wa, wb = weights(run.shard_dir(k)), weights(reference.shard_dir(k))
        assert all(torch.equal(wa[n], wb[n]) for n in wa)
    assert torch.equal(run.scores(stream[2].test.x), reference.scores(stream[2].test.x))


def test_unknown_ids_change_nothing(run_copy: Path):
    stream = toy_stream()
    run = ShardedRun.open(run_copy, stream, build)
    before = (run_copy / "sharded.json").read_bytes()
    test_id = content_ids(stream[0].test)[0]  # a test sample: never trained on
    with pytest.raises(DataError, match=r"1 of the 2 ids were never trained on .*" + test_id):
        run.forget({test_id, sample_ids(stream[0])[0]})
    with pytest.raises(DataError, match="not one string"):
        run.forget(sample_ids(stream[0])[0])
    with pytest.raises(DataError, match="no ids"):
        run.forget(set())
    assert (run_copy / "sharded.json").read_bytes() == before and not (run_copy / ".pending").exists()


def test_an_uncommitted_change_is_rolled_back(run_copy: Path):
    stream = toy_stream()
    run = ShardedRun.open(run_copy, stream, build)
    x = stream[1].test.x
    before = run.scores(x)
    # what a kill during retraining leaves: a half-built shard under .pending, no commit.json
    shutil.copytree(run_copy / "shard-0", run_copy / ".pending" / "shard-0")
    (run_copy / ".pending" / "shard-0" / "config.json").unlink()
    reopened = ShardedRun.open(run_copy, stream, build)
    assert not (run_copy / ".pending").exists()
    assert torch.equal(reopened.scores(x), before) and reopened.deleted == frozenset()


def test_a_change_interrupted_after_its_commit_is_finished(run_copy: Path, tmp_path: Path, monkeypatch):
    stream = toy_stream()
    ids = {sample_ids(stream[0])[3], sample_ids(stream[0])[4]}
    real_replace = os.replace

    def fail_moving_in(src, dst):  # the old shard directory is moved out, the new one not yet in
        if ".pending" in str(src) and "shard-" in Path(src).name:
            raise OSError("simulated crash")
        return real_replace(src, dst)

    monkeypatch.setattr(sharded_module.os, "replace", fail_moving_in)
    with pytest.raises(OSError, match="simulated crash"):
        ShardedRun.open(run_copy, stream, build).forget(ids)
    monkeypatch.undo()
    assert (run_copy / ".pending" / "commit.json").exists()
    assert not all((run_copy / f"shard-{k}").exists() for k in range(SHARDS))  # mid-swap

    reopened = ShardedRun.open(run_copy, stream, build)
    assert reopened.deleted == ids and not (run_copy / ".pending").exists()
    reference = ShardedRun.train(tmp_path / "reference", removed(stream, ids), build, TRAIN, shards=SHARDS)
    assert_same(reopened, reference, stream[0].test.x)


def test_one_writer_at_a_time(run_copy: Path):
    fcntl = pytest.importorskip("fcntl")
    stream = toy_stream()
    run = ShardedRun.open(run_copy, stream, build)
    fd = os.open(run_copy / ".lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # another process changing the run
        with pytest.raises(StateError, match="being changed by another process"):
            run.forget({sample_ids(stream[0])[0]})
    finally:
        os.close(fd)
    assert run.deleted == frozenset() and not (run_copy / ".pending").exists()


def test_bad_input_fails_before_writing(trained: Path, tmp_path: Path):
    stream = toy_stream()
    with pytest.raises(ConfigError, match="shards must be"):
        ShardedRun.train(tmp_path / "x", stream, build, TRAIN, shards=0)
    with pytest.raises(ConfigError, match="checkpoint_every"):
        ShardedRun.train(tmp_path / "x", stream, build, TRAIN.model_copy(update={"checkpoint_every": 5}), 2)
    assert not (tmp_path / "x").exists()
    with pytest.raises(DataError, match="input"):  # a model that does not take the stream's inputs
        ShardedRun.train(tmp_path / "x", stream, lambda: (MLP((5,), 4), []), TRAIN, shards=2)
    with pytest.raises(ConfigError, match="must return \\(model, methods\\)"):
        ShardedRun.train(tmp_path / "x", stream, lambda: MLP((8,), 4), TRAIN, shards=2)
    assert not (tmp_path / "x").exists()
    with pytest.raises(StateError, match="not empty"):
        ShardedRun.train(trained, stream, build, TRAIN, shards=SHARDS)
    with pytest.raises(StateError, match="no sharded run"):
        ShardedRun.open(tmp_path, stream, build)
    with pytest.raises(DataError, match="experience 1 differs"):
        ShardedRun.open(trained, toy_stream(seed=5), build)
    with pytest.raises(DataError, match="has 2 experiences"):
        ShardedRun.open(trained, toy_stream(experiences=2), build)
    with pytest.raises(DataError, match="add the new data"):
        ShardedRun.open(trained, stream, build).extend(stream)


class TinyLM(torch.nn.Module):
    def __init__(self, vocab: int = 16) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, 16)
        self.head = torch.nn.Linear(16, vocab)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.embed(x)))


def test_language_model_shards_average_next_token_distributions(tmp_path: Path):
    g = torch.Generator().manual_seed(0)

    def blocks(n: int) -> Split:
        x = torch.randint(0, 16, (n, 8), generator=g)
        return Split(x, (x + 1) % 16)

    exps = [Experience(i, blocks(24), blocks(8), domain=f"d{i}") for i in range(2)]
    stream = Stream("lm", exps, "language_modeling", 16, (8,))

    def build_lm() -> tuple[torch.nn.Module, list]:
        return TinyLM(), []

    train = TrainConfig(epochs=1, batch_size=8, lr=0.1, log_every=None)
    run = ShardedRun.train(tmp_path / "a", stream, build_lm, train, shards=2)
    probs = run.scores(stream[0].test.x)
    assert probs.shape == (8, 8, 16) and torch.allclose(probs.sum(dim=-1), torch.ones(8, 8))
    assert run.meta["ensemble"]["metric"] == "perplexity" and run.meta["ensemble"]["matrix"][1][0] > 1.0
    with pytest.raises(ConfigError, match="use scores"):
        run.predict(stream[0].test.x)
    ids = set(sample_ids(stream[0])[:3])
    run.forget(ids)
    reference = ShardedRun.train(tmp_path / "b", removed(stream, ids), build_lm, train, shards=2)
    assert torch.equal(run.scores(stream[1].test.x), reference.scores(stream[1].test.x))
    assert run.meta["ensemble"]["matrix"] == reference.meta["ensemble"]["matrix"]
