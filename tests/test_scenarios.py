"""Scenario builders: class-/task-incremental splits, permuted and rotated domains, online (blurry) streams
and per-class subsampling, on scikit-learn digits and small synthetic data sets."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

import lifelong.datasets as D
from lifelong.datasets.base import Dataset
from lifelong.errors import DataError
from lifelong.streams import (
    class_incremental,
    online,
    permuted,
    rotated,
    subsample,
    task_incremental,
)
from lifelong.streams.experience import Split
from lifelong.streams.scenarios import rotate


@pytest.fixture(scope="module")
def digits() -> Dataset:
    if D.info("digits").locate() is None:
        pytest.skip(D.info("digits").how_to_get)
    ds = D.load("digits")
    assert isinstance(ds, Dataset)
    return ds


def synthetic(
    train_per_class: list[int] | int = 6,
    test_per_class: int = 2,
    shape: tuple[int, ...] = (1, 3, 3),
    num_classes: int = 10,
) -> Dataset:
    """Every pixel is unique: x[n].flatten()[k] = 1000 * id + k, ids running over train then test."""
    per = train_per_class if isinstance(train_per_class, list) else [train_per_class] * num_classes
    n_pixels = int(torch.tensor(shape).prod())

    def make(counts: list[int], first_id: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.tensor([c for c, n in enumerate(counts) for _ in range(n)], dtype=torch.long)
        y = y[torch.randperm(len(y), generator=torch.Generator().manual_seed(first_id))]  # mix classes
        ids = torch.arange(first_id, first_id + len(y), dtype=torch.float32)
        x = 1000 * ids[:, None] + torch.arange(n_pixels, dtype=torch.float32)[None, :]
        return x.reshape(len(y), *shape), y

    train_x, train_y = make(per, 0)
    test_x, test_y = make([test_per_class] * num_classes, 10_000)  # float32-exact up to 1000 * 16_000
    return Dataset(
        "synthetic", train_x, train_y, test_x, test_y, classes=[f"c{i}" for i in range(num_classes)]
    )


def _ids(x: torch.Tensor) -> list[int]:
    """The sample ids of synthetic rows (unchanged by a permutation of pixels: the minimum is 1000 * id)."""
    return (x.reshape(len(x), -1).min(dim=1).values / 1000).round().long().tolist()


# --- class- and task-incremental ----------------------------------------------------------------------


def test_class_incremental_default_order(digits: Dataset) -> None:
    stream = class_incremental(digits, experiences=5)
    assert len(stream) == 5 and stream.kind == "classification" and stream.name == "split-digits"
    assert stream.num_classes == 10 and stream.input_shape == (1, 8, 8)
    assert stream.info["class_order"] == list(range(10))
    assert stream.task_classes is None
    for i, e in enumerate(stream):
        assert e.id == i and e.classes == [2 * i, 2 * i + 1] and e.task is None
        for split, xs, ys in (
            (e.train, digits.train_x, digits.train_y),
            (e.test, digits.test_x, digits.test_y),
        ):
            assert split.t is None
            mask = (ys == 2 * i) | (ys == 2 * i + 1)
            # exactly the samples of the experience's classes, in their original order
            assert torch.equal(split.x, xs[mask]) and torch.equal(split.y, ys[mask])
    assert sum(len(e.train) for e in stream) == len(digits.train_y)
    assert sum(len(e.test) for e in stream) == len(digits.test_y)


def test_class_incremental_custom_order(digits: Dataset) -> None:
    order = [3, 1, 4, 0, 5, 9, 2, 6, 8, 7]
    stream = class_incremental(digits, experiences=5, class_order=order)
    assert [e.classes for e in stream] == [[1, 3], [0, 4], [5, 9], [2, 6], [7, 8]]
    assert stream.info["class_order"] == order
    for e in stream:
        assert set(e.train.y.tolist()) == set(e.classes) and set(e.test.y.tolist()) == set(e.classes)


def test_class_incremental_random_order_is_seeded(digits: Dataset) -> None:
    a = class_incremental(digits, experiences=5, class_order="random", seed=7)
    b = class_incremental(digits, experiences=5, class_order="random", seed=7)
    order = a.info["class_order"]
    assert order == b.info["class_order"] and sorted(order) == list(range(10))
    assert [e.classes for e in a] == [sorted(order[2 * i : 2 * i + 2]) for i in range(5)]
    for ea, eb in zip(a, b, strict=True):
        assert torch.equal(ea.train.x, eb.train.x) and torch.equal(ea.test.y, eb.test.y)
    orders = {tuple(class_incremental(digits, 5, "random", seed=s).info["class_order"]) for s in range(5)}
    assert len(orders) > 1  # the seed matters
    assert any(o != tuple(range(10)) for o in orders)


def test_class_incremental_uneven_split() -> None:
    stream = class_incremental(synthetic(), experiences=3)
    # 10 classes into 3: the first experiences take the remainder
    assert [e.classes for e in stream] == [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]
    assert [len(e.train) for e in stream] == [24, 18, 18]
    one_each = class_incremental(synthetic(), experiences=10)
    assert [e.classes for e in one_each] == [[c] for c in range(10)]


def test_class_incremental_bad_requests() -> None:
    ds = synthetic()
    with pytest.raises(DataError, match=r"10 classes into 11 experiences"):
        class_incremental(ds, experiences=11)
    with pytest.raises(DataError, match=r"more than once") as e:
        class_incremental(ds, 5, class_order=[0, 1, 2, 3, 4, 5, 6, 7, 7, 2])
    assert "[2, 7]" in str(e.value)
    with pytest.raises(DataError, match=r"does not have") as e:
        class_incremental(ds, 5, class_order=[0, 1, 2, 3, 4, 5, 6, 7, 8, 12, 10])
    assert "[10, 12]" in str(e.value)
    with pytest.raises(DataError, match="random"):
        class_incremental(ds, 5, class_order="shuffled")


def test_task_incremental_exposes_task_labels(digits: Dataset) -> None:
    stream = task_incremental(digits, experiences=5, class_order=[9, 8, 7, 6, 5, 4, 3, 2, 1, 0])
    assert stream.name == "split-digits-task"
    for i, e in enumerate(stream):
        assert e.task == i
        for split in (e.train, e.test):
            assert split.t is not None and split.t.dtype == torch.long
            assert (split.t == i).all() and len(split.t) == len(split)
    assert stream.task_classes == {0: [8, 9], 1: [6, 7], 2: [4, 5], 3: [2, 3], 4: [0, 1]}
    # same data as the class-incremental split
    plain = class_incremental(digits, experiences=5, class_order=[9, 8, 7, 6, 5, 4, 3, 2, 1, 0])
    for a, b in zip(stream, plain, strict=True):
        assert torch.equal(a.train.x, b.train.x) and torch.equal(a.test.y, b.test.y)


# --- permuted -----------------------------------------------------------------------------------------


def test_permuted_first_experience_is_identity(digits: Dataset) -> None:
    stream = permuted(digits, experiences=3, seed=0)
    assert len(stream) == 3 and stream.name == "permuted-digits"
    first = stream[0]
    assert torch.equal(first.train.x, digits.train_x) and torch.equal(first.test.x, digits.test_x)
    for e in stream:
        assert e.classes == list(range(10))
        assert torch.equal(e.train.y, digits.train_y) and torch.equal(e.test.y, digits.test_y)
        assert e.train.x.shape == digits.train_x.shape


def test_permuted_shuffles_pixels_of_the_same_images(digits: Dataset) -> None:
    stream = permuted(digits, experiences=3, seed=0)
    flat = digits.train_x.reshape(len(digits.train_x), -1)
    for e in list(stream)[1:]:
        px = e.train.x.reshape(len(e.train.x), -1)
        assert not torch.equal(px, flat)
        # each image keeps its pixel values, only their places change
        assert torch.equal(px.sort(dim=1).values, flat.sort(dim=1).values)
    assert not torch.equal(stream[1].train.x, stream[2].train.x)


def test_permuted_uses_one_permutation_per_experience() -> None:
    ds = synthetic()
    stream = permuted(ds, experiences=3, seed=4)
    n_pixels = 9
    for e in stream:
        # pixel k of every image (train and test) comes from the same source pixel perm[k]
        perm = e.train.x.reshape(len(e.train), -1)[0] - 1000 * _ids(e.train.x[:1])[0]
        perm = perm.long()
        assert sorted(perm.tolist()) == list(range(n_pixels))
        for split, src in ((e.train, ds.train_x), (e.test, ds.test_x)):
            assert torch.equal(split.x.reshape(len(split), -1), src.reshape(len(src), -1)[:, perm])
    assert stream[0].domain == "permutation 0"


def test_permuted_is_seeded(digits: Dataset) -> None:
    a, b, c = permuted(digits, 3, seed=1), permuted(digits, 3, seed=1), permuted(digits, 3, seed=2)
    for i in (1, 2):
        assert torch.equal(a[i].train.x, b[i].train.x) and torch.equal(a[i].test.x, b[i].test.x)
        assert not torch.equal(a[i].train.x, c[i].train.x)


# --- rotated ------------------------------------------------------------------------------------------


def test_rotation_by_zero_is_identity(digits: Dataset) -> None:
    stream = rotated(digits, experiences=1, angles=[0.0])
    assert torch.allclose(stream[0].train.x, digits.train_x, atol=1e-6)
    assert torch.allclose(stream[0].test.x, digits.test_x, atol=1e-6)
    assert torch.equal(stream[0].train.y, digits.train_y)


def test_rotation_by_90_degrees_matches_rot90() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 2, 7, 7, generator=g)
    x[:, :, 1, 1:3] = 5.0  # a marked, asymmetric corner
    # counter-clockwise as displayed (row 0 at the top), as torch.rot90(k=1) and torchvision's rotate
    for angle, k in ((90, 1), (180, 2), (270, 3), (-90, -1)):
        out = rotate(x, angle)
        ref = torch.rot90(x, k, dims=(-2, -1))
        assert torch.allclose(out[..., 1:-1, 1:-1], ref[..., 1:-1, 1:-1], atol=1e-4), angle
    assert not torch.allclose(rotate(x, 90), rotate(x, -90), atol=1e-2)
    # the marked pixels (row 1, columns 1-2) move to the left edge: rows 5-4, column 1
    assert torch.allclose(rotate(x, 90)[:, :, 4:6, 1], torch.full((4, 2, 2), 5.0), atol=1e-4)


def test_rotated_stream(digits: Dataset) -> None:
    stream = rotated(digits, experiences=4)
    assert stream.info["angles"] == [0.0, 45.0, 90.0, 135.0]
    assert [e.info["angle"] for e in stream] == [0.0, 45.0, 90.0, 135.0]
    assert [e.domain for e in stream] == ["rotation 0", "rotation 45", "rotation 90", "rotation 135"]
    ref = torch.rot90(digits.test_x, 1, dims=(-2, -1))
    assert torch.allclose(stream[2].test.x[..., 1:-1, 1:-1], ref[..., 1:-1, 1:-1], atol=1e-4)
    for e in stream:
        assert torch.equal(e.train.y, digits.train_y) and e.classes == list(range(10))
    # a 45 degree rotation really changes the images but keeps them in [0, 1]
    assert not torch.allclose(stream[1].train.x, digits.train_x, atol=1e-2)
    assert float(stream[1].train.x.min()) >= 0.0 and float(stream[1].train.x.max()) <= 1.0 + 1e-6


def test_rotated_bad_requests() -> None:
    with pytest.raises(DataError, match="2 angles for 3 experiences"):
        rotated(synthetic(), experiences=3, angles=[0.0, 10.0])
    sequences = synthetic(shape=(40,))
    with pytest.raises(DataError, match="image data"):
        rotated(sequences, experiences=2)
    with pytest.raises(DataError, match=r"\[N, C, H, W\]"):
        rotate(torch.zeros(3, 8, 8), 30.0)


# --- online -------------------------------------------------------------------------------------------


def test_online_without_blur_keeps_the_experiences(digits: Dataset) -> None:
    base = class_incremental(digits, experiences=5)
    stream = online(base)
    assert stream.single_pass and not base.single_pass
    assert stream.name == "online-split-digits" and stream.info["blurry"] == 0.0
    assert stream.info["class_order"] == base.info["class_order"]
    for a, b in zip(stream, base, strict=True):
        assert torch.equal(a.train.x, b.train.x) and torch.equal(a.train.y, b.train.y)
        assert torch.equal(a.test.x, b.test.x) and a.classes == b.classes


def test_online_blurry_moves_a_fraction_to_other_experiences(digits: Dataset) -> None:
    base = class_incremental(digits, experiences=5)
    stream = online(base, blurry=0.2, seed=0)
    home = {c: i for i, e in enumerate(base) for c in e.classes}  # experience each class belongs to
    for i, (e, b) in enumerate(zip(stream, base, strict=True)):
        n = len(b.train)
        stays = sum(1 for c in e.train.y.tolist() if home[c] == i)
        assert stays == n - round(0.2 * n)  # 20% of experience i left it
        # ... and went to the other experiences: all of them received some
        elsewhere = Counter(
            j for j, other in enumerate(stream) if j != i for c in other.train.y.tolist() if home[c] == i
        )
        assert sum(elsewhere.values()) == round(0.2 * n)
        assert set(elsewhere) == set(range(5)) - {i}
        # test sets are untouched
        assert torch.equal(e.test.x, b.test.x) and torch.equal(e.test.y, b.test.y)
    assert sum(len(e.train) for e in stream) == sum(len(e.train) for e in base)
    assert Counter(torch.cat([e.train.y for e in stream]).tolist()) == Counter(digits.train_y.tolist())


def test_online_blurry_preserves_every_sample_once() -> None:
    base = task_incremental(synthetic(train_per_class=20), experiences=5)
    stream = online(base, blurry=0.3, seed=1)
    ids = [i for e in stream for i in _ids(e.train.x)]
    assert sorted(ids) == sorted(i for e in base for i in _ids(e.train.x))  # each sample exactly once
    # a moved sample keeps its own label and task label
    task_of = {c: t for t, classes in base.task_classes.items() for c in classes}
    for e in stream:
        assert e.train.t is not None
        assert [task_of[c] for c in e.train.y.tolist()] == e.train.t.tolist()
        assert any(t != e.id for t in e.train.t.tolist())  # something really arrived from elsewhere
    # the task -> classes map still describes the tasks
    assert stream.task_classes == base.task_classes


def test_online_is_seeded(digits: Dataset) -> None:
    base = class_incremental(digits, experiences=5)
    a, b, c = online(base, 0.2, seed=3), online(base, 0.2, seed=3), online(base, 0.2, seed=4)
    for ea, eb in zip(a, b, strict=True):
        assert torch.equal(ea.train.x, eb.train.x) and torch.equal(ea.train.y, eb.train.y)
    assert any(not torch.equal(ea.train.y, ec.train.y) for ea, ec in zip(a, c, strict=True))


def test_online_bad_blur_and_single_experience() -> None:
    base = class_incremental(synthetic(), experiences=2)
    for bad in (-0.1, 1.0):
        with pytest.raises(DataError, match="blurry"):
            online(base, blurry=bad)
    single = class_incremental(synthetic(), experiences=1)
    out = online(single, blurry=0.5)
    assert torch.equal(out[0].train.x, single[0].train.x) and out.single_pass


# --- subsample ----------------------------------------------------------------------------------------


def test_subsample_keeps_per_class_counts(digits: Dataset) -> None:
    small = subsample(digits, train_per_class=5, test_per_class=3, seed=0)
    assert Counter(small.train_y.tolist()) == {c: 5 for c in range(10)}
    assert Counter(small.test_y.tolist()) == {c: 3 for c in range(10)}
    assert small.name == digits.name and small.classes == digits.classes
    # the kept rows are original rows with their own labels
    for x, y in zip(small.train_x, small.train_y, strict=True):
        match = (digits.train_x == x).flatten(1).all(dim=1) & (digits.train_y == y)
        assert bool(match.any())
    again = subsample(digits, train_per_class=5, test_per_class=3, seed=0)
    other = subsample(digits, train_per_class=5, test_per_class=3, seed=1)
    assert torch.equal(small.train_x, again.train_x) and torch.equal(small.test_x, again.test_x)
    assert not torch.equal(small.train_x, other.train_x)


def test_subsample_short_classes_and_none() -> None:
    ds = synthetic(train_per_class=[1, 2, 3, 4, 5, 6, 7, 8, 9, 10])
    small = subsample(ds, train_per_class=4)
    assert Counter(small.train_y.tolist()) == {c: min(c + 1, 4) for c in range(10)}
    assert torch.equal(small.test_x, ds.test_x)  # None keeps the split whole
    ids = _ids(small.train_x)
    assert len(set(ids)) == len(ids) and set(ids) <= set(_ids(ds.train_x))
    assert ids == sorted(ids)  # kept in the original order
    assert torch.equal(subsample(ds).train_x, ds.train_x)


def test_split_rows_align() -> None:
    with pytest.raises(DataError, match="align"):
        Split(torch.zeros(3, 2), torch.zeros(2))
