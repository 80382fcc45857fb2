"""Fashion-MNIST (Zalando): 70000 grey 28x28 clothing images in 10 classes, from the original IDX files.

Searched, in order: `root`, `$LIFELONG_DATA/fashion-mnist`, the Debian package folder
`/usr/share/datasets/fashion-mnist`, and the user cache `~/.cache/lifelong/fashion-mnist`
(`$XDG_CACHE_HOME` respected). `download=True` fetches the four original files, checked against
their official MD5 sums, when no local copy exists.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import os
import tempfile
import zlib
from pathlib import Path
from typing import IO, TYPE_CHECKING

from lifelong.datasets.base import Dataset, env_data_dir, user_cache_dir
from lifelong.errors import DataError, DatasetNotFoundError

if TYPE_CHECKING:
    import numpy as np

SUBDIR = "fashion-mnist"
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
# part -> (file name, MD5 of the original upstream file). Debian re-gzips its copies, so their MD5s
# differ: only downloaded files are checked.
FILES: dict[str, tuple[str, str]] = {
    "train_images": ("train-images-idx3-ubyte.gz", "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
    "train_labels": ("train-labels-idx1-ubyte.gz", "25c81989df183df01b3e8a0aad5dffbe"),
    "test_images": ("t10k-images-idx3-ubyte.gz", "bef4ecab320f06d8554ea6380940ec79"),
    "test_labels": ("t10k-labels-idx1-ubyte.gz", "bb300cfdad3c16e7a12a480ee83cd310"),
}
CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
HOW_TO_GET = (
    "Get Fashion-MNIST with one of:\n"
    "  - Debian/Ubuntu: sudo apt-get install -y dataset-fashion-mnist\n"
    "  - Python: lifelong.datasets.load('fashion_mnist', download=True)"
    "  (30 MB into ~/.cache/lifelong/fashion-mnist)\n"
    "  - or put the four *-ubyte.gz files into $LIFELONG_DATA/fashion-mnist and set LIFELONG_DATA"
)

# IDX type byte -> numpy dtype (multi-byte values are big-endian).
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | os.PathLike[str], ndim: int | None = None) -> np.ndarray:
    """Parse an IDX file (gzipped or raw) into a read-only numpy array of its stored shape.

    Raises DataError when the file is not gzip/IDX, `ndim` does not match, or its size disagrees
    with the header (truncated or padded).
    """
    import numpy as np  # here: listing the sources must not import numpy

    path = Path(path)
    data = path.read_bytes()
    if data[:2] == b"\x1f\x8b":
        try:
            data = _gunzip(data)
        except (OSError, EOFError, zlib.error) as e:
            raise DataError(f"{path}: damaged gzip stream ({e}); {_damaged_hint(path)}") from e
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise DataError(f"{path}: not an IDX file (bad magic number {data[:4].hex()}); {_damaged_hint(path)}")
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    n = data[3]
    if ndim is not None and n != ndim:
        raise DataError(f"{path}: IDX file has {n} dimensions, expected {ndim}; {_damaged_hint(path)}")
    header = 4 + 4 * n
    if len(data) < header:
        raise DataError(f"{path}: IDX header is truncated; {_damaged_hint(path)}")
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=n, offset=4))
    expected = math.prod(dims) * dtype.itemsize
    if len(data) - header != expected:
        raise DataError(
            f"{path}: IDX header announces shape {dims} ({expected} bytes of data) but the file holds "
            f"{len(data) - header} bytes; {_damaged_hint(path)}"
        )
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(dims)


def _gunzip(data: bytes) -> bytes:
    # zlib alone is ~1.7x faster than gzip.decompress; fall back to gzip for multi-member files.
    z = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    out = z.decompress(data)
    if not z.eof:
        raise EOFError("compressed stream ends early (file truncated)")
    return gzip.decompress(data) if z.unused_data else out


def _damaged_hint(path: Path) -> str:
    return f"delete it and download again, or reinstall the package that provided {path.parent}"


def search_paths(root: str | os.PathLike[str] | None = None) -> list[Path]:
    """Folders searched for the four files, in order."""
    paths = [Path(root).expanduser()] if root else []
    env = env_data_dir(SUBDIR)
    if env is not None:
        paths.append(env)
    paths += [DEBIAN_DIR, user_cache_dir(SUBDIR)]
    return paths


def _part_path(folder: Path, filename: str) -> Path | None:
    # Accept the files gunzipped as well (e.g. copied from another tool's cache).
    for candidate in (folder / filename, folder / filename.removesuffix(".gz")):
        if candidate.is_file():
            return candidate
    return None


def find(root: str | os.PathLike[str] | None = None) -> Path | None:
    """First searched folder that holds all four files, or None."""
    for folder in search_paths(root):
        if all(_part_path(folder, name) is not None for name, _ in FILES.values()):
            return folder
    return None


def locate() -> str | None:
    folder = find()
    return str(folder) if folder is not None else None


def _urlopen(url: str, timeout: float) -> IO[bytes]:
    import urllib.request  # lazy: keeps `import lifelong.datasets` cheap

    return urllib.request.urlopen(url, timeout=timeout)


def _fetch(url: str, target: Path, md5: str) -> None:
    """Stream `url` to a temp file beside `target`, check its MD5, then rename it into place."""
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    tmp = Path(tmp_name)
    try:
        digest = hashlib.md5(usedforsecurity=False)
        with os.fdopen(fd, "wb") as out:
            try:
                with _urlopen(url, timeout=60) as response:
                    while chunk := response.read(1 << 20):
                        digest.update(chunk)
                        out.write(chunk)
            except OSError as e:  # URLError, timeouts and resets are all OSErrors
                raise DataError(f"could not download {url}: {e}\n{HOW_TO_GET}") from e
        if digest.hexdigest() != md5:
            raise DataError(
                f"checksum mismatch for {url}: got MD5 {digest.hexdigest()}, expected {md5}; "
                "the download was corrupted or the server changed the file. Nothing was saved."
            )
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def download_fashion_mnist(dest: str | os.PathLike[str] | None = None) -> Path:
    """Download the four original files into `dest` (default: the user cache) and return the folder.

    Files already present are kept; each new file is MD5-checked before it appears under its name.
    """
    folder = Path(dest).expanduser() if dest else user_cache_dir(SUBDIR)
    folder.mkdir(parents=True, exist_ok=True)
    for name, md5 in FILES.values():
        target = folder / name
        if not target.is_file():
            _fetch(URL + name, target, md5)
    return folder


def load_fashion_mnist(root: str | None = None, download: bool = False) -> Dataset:
    """Fashion-MNIST as float32 images [N, 1, 28, 28] in [0, 1] and int64 labels (60000 train, 10000 test).

    With `download=True` and no local copy, the files are downloaded into `root` if given, else into
    the user cache.
    """
    import numpy as np

    folder = find(root)
    if folder is None:
        if not download:
            looked = "\n".join(f"  {p}" for p in search_paths(root))
            raise DatasetNotFoundError(f"Fashion-MNIST not found. Looked in:\n{looked}\n{HOW_TO_GET}")
        folder = download_fashion_mnist(root)

    parts: dict[str, np.ndarray] = {}
    for part, (name, _) in FILES.items():
        path = _part_path(folder, name)
        assert path is not None  # find() checked it
        parts[part] = read_idx(path, ndim=3 if part.endswith("images") else 1)

    import torch  # here, not at the top: `lifelong datasets` only locates files and must start fast

    tensors = []
    for split in ("train", "test"):
        images, labels = parts[f"{split}_images"], parts[f"{split}_labels"]
        if images.shape[1:] != (28, 28) or images.dtype != np.uint8:
            raise DataError(
                f"{folder}: {split} images are {images.dtype} {images.shape}, expected uint8 [N, 28, 28]"
            )
        if len(labels) != len(images):
            raise DataError(f"{folder}: {len(images)} {split} images but {len(labels)} labels")
        if len(labels) and int(labels.max()) >= len(CLASSES):
            raise DataError(
                f"{folder}: {split} label {int(labels.max())} is out of range 0-{len(CLASSES) - 1}"
            )
        # torch converts several times faster than numpy's astype; copy() makes the buffer writable.
        x = torch.from_numpy(images.copy()).unsqueeze(1).to(torch.float32).div_(255.0)
        tensors += [x, torch.from_numpy(labels.astype(np.int64))]
    train_x, train_y, test_x, test_y = tensors
    return Dataset(
        "fashion_mnist", train_x, train_y, test_x, test_y, classes=list(CLASSES), source=str(folder)
    )
