"""Replay memory: the reservoir keeps every offered sample with probability capacity / seen (checked
statistically and against a sequential algorithm R), the class-balanced policy shares slots equally, the
state round-trips exactly, and the Replay method mixes memory into batches as documented."""

from __future__ import annotations

import io
from collections import Counter

import pytest
import torch
from torch import nn

from lifelong.errors import ConfigError
from lifelong.memory import ReplayMemory
from lifelong.methods.base import Context
from lifelong.methods.replay import Replay
from lifelong.streams.experience import Experience, Split, Stream


def _ids(start: int, n: int, *, task: int | None = None, classes: int | None = None) -> Split:
    """Samples whose every feature is their id (stored rows can be traced back); y = id, or id % classes."""
    ids = torch.arange(start, start + n)
    x = ids.to(torch.float32).reshape(n, 1, 1, 1).expand(n, 1, 2, 2).clone()
    y = ids if classes is None else ids % classes
    t = None if task is None else torch.full((n,), task, dtype=torch.long)
    return Split(x, y, t)


def _batches(sizes: list[int], **kw) -> list[Split]:
    out, at = [], 0
    for s in sizes:
        out.append(_ids(at, s, **kw))
        at += s
    return out


def _stored_ids(mem: ReplayMemory) -> list[int]:
    c = mem.contents()
    return c.x[:, 0, 0, 0].long().tolist()


# --- reservoir ----------------------------------------------------------------------------------------

SIZES = [1, 7, 3, 25, 64, 13, 50, 37]  # varied batch sizes, N = 200
N, M, TRIALS = sum(SIZES), 10, 2000


def test_reservoir_inclusion_probability_is_capacity_over_seen() -> None:
    batches = _batches(SIZES)
    counts = torch.zeros(N)
    for seed in range(TRIALS):
        mem = ReplayMemory(M, "reservoir", seed=seed)
        for b in batches:
            mem.add(b)
        stored = mem.contents().y
        assert len(stored) == M and len(set(stored.tolist())) == M  # always full, never a duplicate
        counts[stored] += 1

    p = M / N  # 0.05
    sd = (TRIALS * p * (1 - p)) ** 0.5  # binomial standard deviation of one position's count (~9.7)
    z = (counts - TRIALS * p) / sd
    # every position on its own: within 5 sigma of TRIALS * M / N = 100
    assert float(z.abs().max()) < 5.0, counts
    # all positions together: sum z^2 ~ chi^2 with N degrees of freedom (mean N, sd sqrt(2N) = 20)
    assert float((z**2).sum()) < N + 5 * (2 * N) ** 0.5
    # no position bias: the first quarter (including the first M, stored unconditionally at first) and the
    # last quarter (offered when the memory was long full) are kept equally often. The per-trial counts of
    # a quarter are negatively correlated (the memory holds exactly M), so the binomial sd is an upper bound.
    quarter = N // 4
    sd_quarter = (TRIALS * quarter * p * (1 - p)) ** 0.5
    early, late = float(counts[:quarter].sum()), float(counts[-quarter:].sum())
    expected = TRIALS * quarter * p  # 5000
    assert abs(early - expected) < 5 * sd_quarter
    assert abs(late - expected) < 5 * sd_quarter
    assert abs(early - late) < 5 * (2**0.5) * sd_quarter


def test_reservoir_bookkeeping() -> None:
    mem = ReplayMemory(5, "reservoir", seed=0)
    assert len(mem) == 0 and mem.seen == 0
    mem.add(_ids(0, 3))
    assert (len(mem), mem.size, mem.seen) == (3, 3, 3)
    assert sorted(_stored_ids(mem)) == [0, 1, 2]  # below capacity everything is kept, in order
    mem.add(_ids(3, 1))
    assert (len(mem), mem.seen) == (4, 4)
    mem.add(_ids(4, 4))
    assert (len(mem), mem.seen) == (5, 8)
    assert len(set(_stored_ids(mem))) == 5 and set(_stored_ids(mem)) <= set(range(8))
    mem.add(_ids(8, 100))
    assert (len(mem), mem.seen) == (5, 108)
    stored = _stored_ids(mem)
    assert len(set(stored)) == 5 and all(0 <= i < 108 for i in stored)
    # x and y stay aligned: the label of every stored row is its id
    assert mem.contents().y.tolist() == stored
    # the stored x keeps the sample's shape
    assert mem.contents().x.shape == (5, 1, 2, 2)


def _reference_algorithm_r(capacity: int, batches: list[Split], seed: int) -> tuple[list[int], int]:
    """Vitter's algorithm R, one sample at a time, fed the same uniform draws as the memory makes."""
    g = torch.Generator().manual_seed(seed)
    slots: list[int | None] = [None] * capacity
    seen, collisions = 0, 0
    for batch in batches:
        draws = torch.rand(len(batch), generator=g, dtype=torch.float64).tolist()
        picked: set[int] = set()
        for k, u in enumerate(draws):
            n = seen + k  # 0-based number of this sample in the whole stream
            j = n if n < capacity else int(u * (n + 1))  # uniform on {0, ..., n}
            if j < capacity:
                slots[j] = int(batch.y[k])  # a later sample overwrites an earlier one
                collisions += j in picked
                picked.add(j)
        seen += len(batch)
    return [s for s in slots if s is not None], collisions


@pytest.mark.parametrize(("capacity", "sizes", "seed"), [(3, [2, 200, 150], 0), (7, [5, 1, 90, 40, 300], 11)])
def test_reservoir_batch_equals_sequential_algorithm_r(capacity: int, sizes: list[int], seed: int) -> None:
    batches = _batches(sizes)
    mem = ReplayMemory(capacity, "reservoir", seed=seed)
    for b in batches:
        mem.add(b)
    expected, collisions = _reference_algorithm_r(capacity, batches, seed)
    # the case is only meaningful if several samples of one batch picked the same slot
    assert collisions >= 5
    assert _stored_ids(mem) == expected
    assert mem.contents().y.tolist() == expected


def test_sample_returns_distinct_stored_items() -> None:
    mem = ReplayMemory(20, "reservoir", seed=3)
    for b in _batches([15, 30, 40]):
        mem.add(b)
    stored = set(_stored_ids(mem))
    for n in (1, 7, 20):
        s = mem.sample(n)
        ids = s.x[:, 0, 0, 0].long().tolist()
        assert len(s) == n and len(set(ids)) == n and set(ids) <= stored
        assert s.y.tolist() == ids  # x, y stay aligned
        assert s.t is None  # no task labels were offered
    # asking for more than is stored returns everything once, shuffled
    small = ReplayMemory(50, "reservoir", seed=3)
    small.add(_ids(0, 12))
    s = small.sample(30)
    assert sorted(s.y.tolist()) == list(range(12))
    assert s.y.tolist() != list(range(12))  # shuffled (fixed seed: a fixed, non-identity order)


def test_sample_carries_task_labels() -> None:
    mem = ReplayMemory(16, "reservoir", seed=1)
    for task, start in enumerate((0, 10, 20)):
        mem.add(_ids(start, 10, task=task))
    c = mem.contents()
    assert c.t is not None and (c.t == c.y // 10).all()
    s = mem.sample(8)
    assert s.t is not None and (s.t == s.y // 10).all()
    # without task labels the stored t is -1 and sample() hands out None
    plain = ReplayMemory(4, "reservoir", seed=1)
    plain.add(_ids(0, 10))
    assert (plain.contents().t == -1).all() and plain.sample(3).t is None


# --- class balanced -----------------------------------------------------------------------------------


def _experience_data(counts: dict[int, int], start: int, task: int | None = None) -> Split:
    """`counts[c]` samples of class c, with globally unique ids (the features) starting at `start`."""
    ys = [c for c, n in counts.items() for _ in range(n)]
    n = len(ys)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(start))  # interleave the classes
    y = torch.tensor(ys, dtype=torch.long)[perm]
    s = _ids(start, n, task=task)
    return Split(s.x, y, s.t)


def _check_balanced(mem: ReplayMemory, available: dict[int, int]) -> Counter:
    """Water-filling: a class holds all it has, or is at most one below the fullest class (so the classes
    that could take more differ by at most one); the total is the capacity or all there is."""
    counts = Counter(mem.contents().y.tolist())
    assert set(counts) == set(available)
    assert all(counts[c] <= available[c] for c in available)
    top = max(counts.values())
    # a class that holds less than it has is at most one below the fullest class
    assert all(counts[c] >= top - 1 for c in available if counts[c] < available[c]), counts
    assert sum(counts.values()) == min(mem.capacity, sum(available.values()))
    return counts


EXPERIENCES = [{0: 30, 1: 30}, {2: 30, 3: 3, 4: 30}, {5: 2, 6: 50}, {7: 1}]
# capacity 23, hand-computed by water-filling (short classes take all they have, the rest share):
#   after 0: 23 over {0, 1}                  -> 12, 11 (the first class by id gets the remainder)
#   after 1: class 3 has 3 <= 23 // 5 = 4    -> 3; 20 over {0, 1, 2, 4} -> 5 each
#   after 2: class 5 has 2 <= 23 // 7 = 3    -> 2; 21 // 6 = 3: class 3 has 3 -> 3;
#            18 over {0, 1, 2, 4, 6}: 3 rem 3 -> 4, 4, 4, 3, 3
#   after 3: class 7 has 1 -> 1; then 5 (2), 3 (3), 4 (3), 6 (3) are short in turn;
#            11 over {0, 1, 2}: 3 rem 2     -> 4, 4, 3
EXPECTED_COUNTS = [
    {0: 12, 1: 11},
    {0: 5, 1: 5, 2: 5, 3: 3, 4: 5},
    {0: 4, 1: 4, 2: 4, 3: 3, 4: 3, 5: 2, 6: 3},
    {0: 4, 1: 4, 2: 3, 3: 3, 4: 3, 5: 2, 6: 3, 7: 1},
]


def test_class_balanced_shares_slots_equally() -> None:
    mem = ReplayMemory(23, "class_balanced", seed=0)
    start, origin_task = 0, {}
    for task, (spec, expected) in enumerate(zip(EXPERIENCES, EXPECTED_COUNTS, strict=True)):
        data = _experience_data(spec, start, task=task)
        for i in range(len(data)):
            origin_task[start + i] = task
        before = mem.contents() if len(mem) else None
        before_ids = {} if before is None else _ids_by_class(before)
        available = {c: n for c, n in Counter(before.y.tolist() if before is not None else []).items()}
        available.update(spec)
        mem.rebalance(data)

        counts = _check_balanced(mem, available)
        assert dict(counts) == expected
        after = _ids_by_class(mem.contents())
        data_ids = _ids_by_class(data)
        for c, ids in after.items():
            assert len(ids) == len(set(ids))  # no sample stored twice
            if c in spec:  # a new class: a subset of this experience's samples of c
                assert set(ids) <= set(data_ids[c])
            else:  # an old class keeps only samples it already had
                assert set(ids) <= set(before_ids[c])
        # x, y and t stay aligned through the reshuffle of slots
        c = mem.contents()
        assert c.t is not None
        assert all(origin_task[i] == t for i, t in zip(_stored_ids(mem), c.t.tolist(), strict=True))
        assert mem.seen == start + len(data)
        start += len(data)


def _ids_by_class(s: Split) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for i, y in zip(s.x[:, 0, 0, 0].long().tolist(), s.y.tolist(), strict=True):
        out.setdefault(y, []).append(i)
    return out


def test_class_balanced_total_is_capacity_when_enough_data() -> None:
    mem = ReplayMemory(100, "class_balanced", seed=4)
    mem.rebalance(_experience_data({0: 10, 1: 5}, 0))
    assert dict(Counter(mem.contents().y.tolist())) == {0: 10, 1: 5}  # not enough data: keep it all
    assert (mem.contents().t == -1).all()  # no task labels
    mem.rebalance(_experience_data({2: 200}, 1000))
    counts = Counter(mem.contents().y.tolist())
    assert dict(counts) == {0: 10, 1: 5, 2: 85} and len(mem) == 100
    mem.rebalance(_experience_data({3: 200, 4: 200}, 2000))
    assert dict(Counter(mem.contents().y.tolist())) == {0: 10, 1: 5, 2: 29, 3: 28, 4: 28}
    assert len(mem) == 100


def test_class_balanced_needs_one_label_per_sample() -> None:
    mem = ReplayMemory(10, "class_balanced")
    tokens = torch.zeros((4, 8), dtype=torch.long)
    with pytest.raises(ConfigError, match="reservoir"):
        mem.rebalance(Split(tokens, tokens))


# --- state ---------------------------------------------------------------------------------------------


def _round_trip(state: dict) -> dict:
    """Through bytes, as a checkpoint does (so nothing is shared with the live memory)."""
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf)


def test_reservoir_state_round_trip_continues_identically() -> None:
    past, future = _batches([30, 17, 40]), [_ids(1000 + 50 * i, 50) for i in range(4)]
    a = ReplayMemory(12, "reservoir", seed=5)
    for b in past:
        a.add(b)
    state = _round_trip(a.state_dict())
    b = ReplayMemory(12, "reservoir", seed=99)  # another seed: everything must come from the state
    b.load_state_dict(state)
    control = ReplayMemory(12, "reservoir", seed=99)
    for batch in past:
        control.add(batch)
    assert (b.size, b.seen) == (a.size, a.seen) == (12, 87)
    assert _stored_ids(b) == _stored_ids(a)
    for batch in future:
        a.add(batch)
        b.add(batch)
        control.add(batch)
        assert _stored_ids(b) == _stored_ids(a)
        assert torch.equal(a.sample(5).y, b.sample(5).y)
        control.sample(5)
    # a memory with a different generator makes different choices: the state is what made b agree
    assert _stored_ids(control) != _stored_ids(a)


def test_class_balanced_state_round_trip_continues_identically() -> None:
    a = ReplayMemory(23, "class_balanced", seed=2)
    a.rebalance(_experience_data(EXPERIENCES[0], 0, task=0))
    a.sample(4)  # advance the generator
    b = ReplayMemory(23, "class_balanced", seed=7)
    b.load_state_dict(_round_trip(a.state_dict()))
    for i, spec in enumerate(EXPERIENCES[1:], start=1):
        data = _experience_data(spec, 100 * i, task=i)
        a.rebalance(data)
        b.rebalance(data)
        assert _stored_ids(b) == _stored_ids(a)
        assert torch.equal(a.contents().t, b.contents().t)
        assert torch.equal(a.sample(6).x, b.sample(6).x)


def test_empty_state_round_trip_and_mismatch() -> None:
    a = ReplayMemory(5, "reservoir", seed=1)
    b = ReplayMemory(5, "reservoir", seed=2)
    b.load_state_dict(_round_trip(a.state_dict()))
    a.add(_ids(0, 9))
    b.add(_ids(0, 9))
    assert _stored_ids(a) == _stored_ids(b)
    with pytest.raises(ConfigError, match="capacity"):
        ReplayMemory(6, "reservoir").load_state_dict(a.state_dict())
    with pytest.raises(ConfigError, match="class_balanced"):
        ReplayMemory(5, "class_balanced").load_state_dict(a.state_dict())


def test_bad_memory_config() -> None:
    with pytest.raises(ConfigError, match="at least 1"):
        ReplayMemory(0)
    with pytest.raises(ConfigError, match="reservoir"):
        ReplayMemory(10, "fifo")
    with pytest.raises(ConfigError, match="batch_size"):
        Replay(memory=10, batch_size=0)


# --- the Replay method --------------------------------------------------------------------------------


def _context(experience: Experience, epoch: int = 0) -> Context:
    return Context(nn.Identity(), None, None, experience, 0, [experience], epoch=epoch)


def _classification_stream(train: Split) -> Stream:
    e = Experience(0, train, train, classes=sorted(set(train.y.tolist())))
    return Stream("toy", [e], "classification", 10, tuple(train.x.shape[1:]))


def test_replay_batch_concatenates_current_and_replayed() -> None:
    train = _ids(0, 40, classes=10)
    ctx = _context(_classification_stream(train)[0])
    method = Replay(memory=100, batch_size=4, seed=0)
    first = train.subset(torch.arange(0, 10))
    out = method.batch(ctx, first)
    assert out is first  # nothing to replay yet
    assert len(method.memory) == 10  # ... but the batch went into memory
    second = train.subset(torch.arange(10, 20))
    out = method.batch(ctx, second)
    assert len(out) == 14
    assert torch.equal(out.x[:10], second.x) and torch.equal(out.y[:10], second.y)
    replayed = out.x[10:, 0, 0, 0].long().tolist()
    # 4 distinct samples from the FIRST batch: a batch is never replayed into itself
    assert len(set(replayed)) == 4 and set(replayed) <= set(range(10))
    assert out.y[10:].tolist() == [i % 10 for i in replayed]
    assert len(method.memory) == 20
    # without batch_size, as many replayed samples as the batch has (here 10 of the 20 stored)
    method = Replay(memory=100, seed=0)
    method.batch(ctx, first)
    method.batch(ctx, second)
    out = method.batch(ctx, train.subset(torch.arange(20, 30)))
    assert len(out) == 20 and set(out.x[10:, 0, 0, 0].long().tolist()) <= set(range(20))


def test_replay_fills_memory_only_in_the_first_epoch() -> None:
    train = _ids(0, 30, classes=10)
    exp = _classification_stream(train)[0]
    method = Replay(memory=100, batch_size=5)
    method.batch(_context(exp, epoch=0), train.subset(torch.arange(0, 10)))
    assert (len(method.memory), method.memory.seen) == (10, 10)
    out = method.batch(_context(exp, epoch=1), train.subset(torch.arange(10, 20)))
    assert (len(method.memory), method.memory.seen) == (10, 10)  # not added again in later epochs
    assert len(out) == 15  # but still replayed
    method.batch(_context(exp, epoch=0), train.subset(torch.arange(20, 30)))
    assert (len(method.memory), method.memory.seen) == (20, 20)


def test_replay_class_balanced_fills_at_the_end_of_an_experience() -> None:
    train = _experience_data({0: 20, 1: 20}, 0)
    exp = _classification_stream(train)[0]
    method = Replay(memory=10, batch_size=3, policy="class_balanced")
    ctx = _context(exp)
    first = train.subset(torch.arange(8))
    assert method.batch(ctx, first) is first
    assert len(method.memory) == 0  # batches do not fill a class-balanced memory
    method.end(ctx)
    assert dict(Counter(method.memory.contents().y.tolist())) == {0: 5, 1: 5}
    assert len(method.batch(ctx, train.subset(torch.arange(8)))) == 11


def test_replay_refuses_mixing_task_labels() -> None:
    train = _ids(0, 20, classes=10, task=0)
    exp = _classification_stream(train)[0]
    method = Replay(memory=50, batch_size=2)
    method.batch(_context(exp), train.subset(torch.arange(10)))
    plain = _ids(100, 5, classes=10)
    with pytest.raises(ConfigError, match="task labels"):
        method.batch(_context(exp), plain)


def test_replay_state_dict_round_trip() -> None:
    train = _ids(0, 60, classes=10)
    exp = _classification_stream(train)[0]
    a, b = Replay(memory=8, batch_size=3, seed=0), Replay(memory=8, batch_size=3, seed=1)
    a.batch(_context(exp), train.subset(torch.arange(30)))
    state = a.state_dict()
    assert set(state) >= {"memory.capacity", "memory.x", "memory.generator"}
    b.load_state_dict(_round_trip(state))
    nxt = train.subset(torch.arange(30, 40))
    assert torch.equal(a.batch(_context(exp), nxt).x, b.batch(_context(exp), nxt).x)


def test_class_balanced_policy_rejects_language_modelling() -> None:
    tokens = torch.randint(0, 50, (6, 9))
    lm_split = Split(tokens[:, :-1], tokens[:, 1:])
    lm = Stream("lm", [Experience(0, lm_split, lm_split, domain="a")], "language_modeling", 50, (8,))
    with pytest.raises(ConfigError, match="class_balanced.*reservoir"):
        Replay(memory=10, policy="class_balanced").check(lm, None, [])
    Replay(memory=10, policy="reservoir").check(lm, None, [])  # fine
    Replay(memory=10, policy="class_balanced").check(_classification_stream(_ids(0, 5)), None, [])


def test_class_balanced_returning_classes_mix_old_and_new_in_proportion():
    # domain-incremental: the same two classes come back in every experience (ids tell experiences apart)
    mem = ReplayMemory(40, policy="class_balanced", seed=0)
    for k in range(4):
        mem.rebalance(_experience_data({0: 100, 1: 100}, start=1000 * k))
    per_experience = Counter(i // 1000 for i in _stored_ids(mem))
    # each class holds 20 slots standing for 400 samples, 100 from each experience: ~5 slots each
    assert sum(per_experience.values()) == 40
    assert set(per_experience) == {0, 1, 2, 3}
    assert all(7 <= n <= 13 for n in per_experience.values()), per_experience
    assert mem.class_seen == {0: 400, 1: 400}
