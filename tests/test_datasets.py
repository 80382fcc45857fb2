"""Data-source registry: local sources load correctly; missing, corrupt or tampered data fail clearly."""

from __future__ import annotations

import gzip
import hashlib
import io
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import lifelong.datasets as D
from lifelong.datasets import fashion_mnist as fm
from lifelong.datasets import small, text
from lifelong.errors import DataError, DatasetNotFoundError

SOURCES = [
    "austen",
    "digits",
    "fashion_mnist",
    "fortunes",
    "gcide",
    "kjv",
    "mnist1d",
    "mnist5k",
    "python_docs",
    "wordnet_glosses",
]


def _need(name: str) -> None:
    if D.info(name).locate() is None:
        pytest.skip(f"{name} is not on this machine: {D.info(name).how_to_get}")


def _check_images(d: D.Dataset, n_train: int, n_test: int, shape: tuple[int, ...]) -> None:
    assert d.train_x.shape == (n_train, *shape) and d.test_x.shape == (n_test, *shape)
    assert d.train_x.dtype == d.test_x.dtype == torch.float32
    assert d.train_y.dtype == d.test_y.dtype == torch.int64
    assert d.train_y.shape == (n_train,) and d.test_y.shape == (n_test,)
    for x in (d.train_x, d.test_x):
        assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    assert d.num_classes == 10 and d.input_shape == shape
    assert set(d.train_y.unique().tolist()) == set(range(10))


@pytest.fixture
def no_local_copies(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point every search location at empty temp folders; returns an empty folder to pass as root."""
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("LIFELONG_DATA", str(tmp_path / "env"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(fm, "DEBIAN_DIR", tmp_path / "debian-fashion")
    monkeypatch.setattr(text, "FORTUNES_DIR", tmp_path / "debian-fortunes")
    return empty


# --- registry ---------------------------------------------------------------------------------------


def test_registry_lists_all_sources() -> None:
    assert D.names() == SOURCES
    for name in SOURCES:
        i = D.info(name)
        assert i.name == name and i.kind in {"images", "sequences", "text"}
        assert i.description and i.how_to_get and callable(i.loader)


def test_unknown_name_lists_available() -> None:
    with pytest.raises(DataError, match="unknown data set 'cifar10'") as e:
        D.load("cifar10")
    for name in SOURCES:
        assert name in str(e.value)


def test_import_is_cheap() -> None:
    code = (
        "import sys, lifelong.datasets; "
        "heavy = ('sklearn', 'mlxtend', 'mnist1d', 'pandas', 'scipy', 'rdata'); "
        "print(','.join(m for m in heavy if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


# --- real sources -----------------------------------------------------------------------------------


def test_fashion_mnist() -> None:
    _need("fashion_mnist")
    d = D.load("fashion_mnist")
    _check_images(d, 60000, 10000, (1, 28, 28))
    assert torch.bincount(d.train_y).tolist() == [6000] * 10
    assert torch.bincount(d.test_y).tolist() == [1000] * 10
    assert d.classes[0] == "T-shirt/top" and d.classes[9] == "Ankle boot"
    # Pixels are k/255 exactly: the float conversion must not shift values.
    assert torch.equal((d.test_x * 255).round() / 255, d.test_x)


def test_mnist5k_split_is_stratified_and_fixed() -> None:
    _need("mnist5k")
    d = D.load("mnist5k")
    _check_images(d, 4000, 1000, (1, 28, 28))
    assert torch.bincount(d.train_y).tolist() == [400] * 10
    assert torch.bincount(d.test_y).tolist() == [100] * 10
    assert len(set(d.train_y[:50].tolist())) > 1  # shuffled, not sorted by class


def test_digits() -> None:
    _need("digits")
    d = D.load("digits")
    _check_images(d, 1438, 359, (1, 8, 8))
    train_counts, test_counts = torch.bincount(d.train_y), torch.bincount(d.test_y)
    ratio = test_counts.float() / (train_counts + test_counts).float()
    assert torch.all((ratio - 0.2).abs() < 0.01)
    again = D.load("digits")
    assert torch.equal(again.train_x, d.train_x) and torch.equal(again.test_y, d.test_y)


def test_mnist1d_default_and_custom_without_touching_global_rng() -> None:
    _need("mnist1d")
    random.seed(7)
    np.random.seed(7)
    expected_py, expected_np = random.random(), np.random.rand()
    random.seed(7)
    np.random.seed(7)
    d = D.load("mnist1d")
    assert (random.random(), np.random.rand()) == (expected_py, expected_np)

    assert d.train_x.shape == (4000, 40) and d.test_x.shape == (1000, 40)
    assert d.train_x.dtype == torch.float32 and d.train_y.dtype == torch.int64
    assert d.num_classes == 10 and set(d.train_y.unique().tolist()) == set(range(10))
    assert torch.isfinite(d.train_x).all()

    small_set = D.load("mnist1d", num_samples=200, seed=1)
    assert small_set.train_x.shape == (160, 40) and small_set.test_x.shape == (40, 40)
    with pytest.raises(DataError, match="num_samples"):
        D.load("mnist1d", num_samples=5)


def test_fortunes() -> None:
    _need("fortunes")
    corpus = D.load("fortunes")
    assert isinstance(corpus, D.TextCorpus) and corpus.name == "fortunes"
    assert len(corpus.domains) >= 40 and "computers" in corpus.domains
    assert not any(k.endswith((".dat", ".u8")) for k in corpus.domains)
    texts = [t for ts in corpus.domains.values() for t in ts]
    assert len(texts) > 15000
    assert all(t.strip() and t != "%" and "\n%\n" not in t for t in texts)
    # Debian's files are UTF-8 (a latin-1 read gives mojibake) and a few hold doubly encoded UTF-8.
    assert not any("\u00e2\u0080" in t or "\u00c2" in t for t in texts)
    assert any("don\u2019t" in t for t in corpus.domains["computers"])

    subset = D.load("fortunes", categories=["tao", "zippy"])
    assert list(subset.domains) == ["tao", "zippy"]
    with pytest.raises(DataError, match="unknown fortune categories"):
        D.load("fortunes", categories=["nope"])


def test_fortune_file_parsing(tmp_path: Path) -> None:
    folder = tmp_path / "f"
    (folder / "off").mkdir(parents=True)
    (folder / "quips").write_bytes("%\nfirst\n  line two\n%\n\n%\nna\xefve\n%\n".encode("latin-1"))
    (folder / "quips.dat").write_bytes(b"\x00\x01")
    (folder / "quips.u8").symlink_to("quips")
    (folder / "alias").symlink_to("quips")
    (folder / "off" / "rude").write_text("x\n%\n")
    twice = "don\u2019t".encode().decode("latin-1")  # UTF-8 read as latin-1, then saved as UTF-8
    (folder / "utf").write_text(f"caf\u00e9 \u00fcber\n%\n{twice}\r\n%\r\n", encoding="utf-8")
    corpus = D.load("fortunes", root=str(folder))
    assert corpus.domains == {
        "quips": ["first\n  line two", "na\u00efve"],  # latin-1 fallback
        "utf": ["caf\u00e9 \u00fcber", "don\u2019t"],
    }


# --- failure modes ----------------------------------------------------------------------------------


def test_missing_fashion_mnist_says_how_to_get_it(no_local_copies: Path) -> None:
    with pytest.raises(DatasetNotFoundError) as e:
        D.load("fashion_mnist", root=str(no_local_copies))
    msg = str(e.value)
    assert "sudo apt-get install -y dataset-fashion-mnist" in msg
    assert "download=True" in msg and "LIFELONG_DATA" in msg and str(no_local_copies) in msg
    assert D.info("fashion_mnist").locate() is None


def test_missing_fortunes_says_how_to_get_it(no_local_copies: Path) -> None:
    with pytest.raises(DatasetNotFoundError, match="sudo apt-get install -y fortunes fortunes-min"):
        D.load("fortunes", root=str(no_local_copies))
    assert D.info("fortunes").locate() is None


def test_missing_pip_package_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "mnist1d", None)  # makes `import mnist1d...` fail
    monkeypatch.setitem(sys.modules, "mnist1d.data", None)
    with pytest.raises(DatasetNotFoundError, match=r"pip install 'lifelong\[data\]'"):
        D.load("mnist1d")


def test_search_order_env_var_and_cache(no_local_copies: Path, tmp_path: Path) -> None:
    paths = fm.search_paths(str(no_local_copies))
    assert paths == [
        no_local_copies,
        tmp_path / "env" / "fashion-mnist",
        tmp_path / "debian-fashion",
        tmp_path / "cache" / "lifelong" / "fashion-mnist",
    ]
    fortune_paths = text.fortunes_search_paths()
    assert fortune_paths[-1] == tmp_path / "cache/lifelong/fortunes/usr/share/games/fortunes"


# --- IDX parsing and download -----------------------------------------------------------------------


def _idx(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    return header + array.astype(np.uint8).tobytes()


def _fake_fashion(n_train: int = 20, n_test: int = 10) -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    arrays = {
        "train_images": rng.integers(0, 256, (n_train, 28, 28)),
        "train_labels": np.arange(n_train) % 10,
        "test_images": rng.integers(0, 256, (n_test, 28, 28)),
        "test_labels": np.arange(n_test) % 10,
    }
    arrays["train_images"][0, 0, 0], arrays["train_images"][0, 0, 1] = 0, 255
    arrays["test_images"][0, 0, 0], arrays["test_images"][0, 0, 1] = 0, 255
    return {fm.FILES[k][0]: gzip.compress(_idx(a), mtime=0) for k, a in arrays.items()}


def test_read_idx_roundtrip_gz_and_raw(tmp_path: Path) -> None:
    a = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    (tmp_path / "a.gz").write_bytes(gzip.compress(_idx(a)))
    (tmp_path / "a").write_bytes(_idx(a))
    for name in ("a.gz", "a"):
        out = fm.read_idx(tmp_path / name, ndim=3)
        assert out.dtype == np.uint8 and np.array_equal(out, a)
    with pytest.raises(DataError, match="3 dimensions, expected 1"):
        fm.read_idx(tmp_path / "a", ndim=1)


@pytest.mark.parametrize(
    "corrupt, message",
    [
        (lambda raw, gz: raw[:-5], "holds 19 bytes"),  # truncated payload
        (lambda raw, gz: raw + b"\x00", "holds 25 bytes"),  # trailing garbage
        (lambda raw, gz: raw[:6], "header is truncated"),
        (lambda raw, gz: b"\x12\x34" + raw[2:], "bad magic number"),
        (lambda raw, gz: b"", "bad magic number"),
        (lambda raw, gz: gz[: len(gz) // 2], "damaged gzip"),  # download cut short
        (lambda raw, gz: gz[:10] + bytes(b ^ 0xFF for b in gz[10:]), "damaged gzip"),
    ],
)
def test_read_idx_rejects_corrupt_files(tmp_path: Path, corrupt, message: str) -> None:
    raw = _idx(np.arange(24, dtype=np.uint8).reshape(2, 3, 4))
    path = tmp_path / "bad-idx3-ubyte"
    path.write_bytes(corrupt(raw, gzip.compress(raw)))
    with pytest.raises(DataError, match=message) as e:
        fm.read_idx(path, ndim=3)
    assert str(path) in str(e.value)


def test_loader_rejects_mismatched_files(tmp_path: Path) -> None:
    files = _fake_fashion()
    files["t10k-labels-idx1-ubyte.gz"] = gzip.compress(_idx(np.zeros(7)))
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    with pytest.raises(DataError, match="10 test images but 7 labels"):
        fm.load_fashion_mnist(root=str(tmp_path))


def _serve(files: dict[str, bytes], calls: list[str]):
    def fake_urlopen(url: str, timeout: float) -> io.BytesIO:
        assert url.startswith(fm.URL)
        calls.append(url)
        return io.BytesIO(files[url.removeprefix(fm.URL)])

    return fake_urlopen


def test_download_verifies_md5_then_loads(no_local_copies: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files = _fake_fashion()
    sums = {k: (name, hashlib.md5(files[name]).hexdigest()) for k, (name, _) in fm.FILES.items()}
    monkeypatch.setattr(fm, "FILES", sums)
    calls: list[str] = []
    monkeypatch.setattr(fm, "_urlopen", _serve(files, calls))

    d = D.load("fashion_mnist", download=True)
    cache = fm.user_cache_dir("fashion-mnist")
    assert d.source == str(cache) and len(calls) == 4
    assert sorted(p.name for p in cache.iterdir()) == sorted(files)
    _check_images(d, 20, 10, (1, 28, 28))

    D.load("fashion_mnist", download=True)  # found in the cache now: no second download
    assert len(calls) == 4


def test_download_rejects_tampered_bytes(no_local_copies: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files = _fake_fashion()
    sums = {k: (name, hashlib.md5(files[name]).hexdigest()) for k, (name, _) in fm.FILES.items()}
    monkeypatch.setattr(fm, "FILES", sums)
    tampered = dict(files)
    name = fm.FILES["train_images"][0]
    tampered[name] = tampered[name][:-1] + bytes([tampered[name][-1] ^ 1])
    monkeypatch.setattr(fm, "_urlopen", _serve(tampered, []))

    with pytest.raises(DataError, match="checksum mismatch") as e:
        D.load("fashion_mnist", root=str(no_local_copies), download=True)
    assert not isinstance(e.value, DatasetNotFoundError)
    assert list(no_local_copies.iterdir()) == []  # no temp file, no partial file left behind


def test_download_network_error_is_clear(no_local_copies: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(url: str, timeout: float) -> io.BytesIO:
        raise OSError("Network is unreachable")

    monkeypatch.setattr(fm, "_urlopen", offline)
    with pytest.raises(DataError, match="could not download.*Network is unreachable") as e:
        D.load("fashion_mnist", root=str(no_local_copies), download=True)
    assert "apt-get install -y dataset-fashion-mnist" in str(e.value)
    assert list(no_local_copies.iterdir()) == []


def test_stratified_split_is_deterministic_and_disjoint() -> None:
    y = np.repeat(np.arange(3), [10, 20, 31])
    tr, te = small.stratified_split(y, 0.2)
    tr2, te2 = small.stratified_split(y, 0.2)
    assert np.array_equal(tr, tr2) and np.array_equal(te, te2)
    assert set(tr).isdisjoint(te) and len(tr) + len(te) == len(y)
    assert np.bincount(y[te]).tolist() == [2, 4, 6]
    with pytest.raises(DataError):
        small.stratified_split(y, 1.0)
