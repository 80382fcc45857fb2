"""Where a text source that ships in Debian packages is found, and how it is fetched.

Each folder searched is taken either as the data folder itself (it holds the marker file) or as the root
that `dpkg -x` extracted the packages into (the data sits at `<folder>/<data_path>`). In order: the `root`
argument, `$LIFELONG_DATA/<name>`, the system path where `apt-get install` puts it, and
`~/.cache/lifelong/<name>` (where `download=True` and the commands of `how_to_get` extract it).

Example:
    >>> src = DebianSource("demo", ("wordnet-base",), "usr/share/wordnet", ("data.noun",), "WordNet")
    >>> [str(p) for p in src.search_paths("/data/wn")][:2]
    ['/data/wn', '/data/wn/usr/share/wordnet']
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from lifelong.atomic import fsync_dir
from lifelong.datasets.base import env_data_dir, user_cache_dir
from lifelong.errors import DatasetNotFoundError

_DOWNLOAD_TIMEOUT_S = 1800  # a slow mirror may need minutes for the 15 MB of dict-gcide
#: Where `apt-get install` puts packages (tests point it at an empty folder).
SYSTEM_ROOT = Path("/")


@dataclass(frozen=True)
class DebianSource:
    """A data source inside one or more Debian packages.

    `data_path` is the data folder inside the packages (e.g. `usr/share/wordnet`); the folder counts as
    found when it holds any of `markers`. `apt_install` says whether `apt-get install` is a fine way to get
    it (data-only, pulls nothing else); otherwise only `apt-get download` + `dpkg -x` is suggested.
    """

    name: str
    packages: tuple[str, ...]
    data_path: str
    markers: tuple[str, ...]
    title: str
    apt_install: bool = False

    def search_paths(self, root: str | os.PathLike[str] | None = None) -> list[Path]:
        """The folders looked at, in order."""
        paths: list[Path] = []
        for base in (Path(root).expanduser() if root else None, env_data_dir(self.name)):
            if base is not None:
                paths += [base, base / self.data_path]
        paths += [SYSTEM_ROOT / self.data_path, user_cache_dir(self.name) / self.data_path]
        return paths

    def find(self, root: str | os.PathLike[str] | None = None) -> Path | None:
        """The first searched folder holding a marker file, or None."""
        for folder in self.search_paths(root):
            if any((folder / m).is_file() for m in self.markers):
                return folder
        return None

    def locate(self) -> str | None:
        folder = self.find()
        return str(folder) if folder is not None else None

    @property
    def how_to_get(self) -> str:
        """The exact commands that put the source where `find` looks."""
        cache = _display(user_cache_dir(self.name))
        pkgs = " ".join(self.packages)
        if len(self.packages) == 1:
            extract = f"dpkg -x {self.packages[0]}_*.deb {cache}"
        else:
            extract = f"for f in {' '.join(p + '_*.deb' for p in self.packages)}; do dpkg -x $f {cache}; done"
        lines = [f"Get {self.title} with one of:"]
        if self.apt_install:
            lines.append(f"  - Debian/Ubuntu: sudo apt-get install -y --no-install-recommends {pkgs}")
        lines += [
            f"  - Debian/Ubuntu without installing: apt-get download {pkgs} && {extract}",
            f'  - in Python: lifelong.datasets.load("{self.name}", download=True) (runs the line above)',
            f"  - or extract the package(s) into $LIFELONG_DATA/{self.name} and set LIFELONG_DATA",
        ]
        return "\n".join(lines)

    def not_found(self, root: str | os.PathLike[str] | None = None) -> DatasetNotFoundError:
        looked = "\n".join(f"  {p}" for p in self.search_paths(root))
        wanted = " or ".join(self.markers)
        return DatasetNotFoundError(
            f"{self.title} ({self.name}) not found: no folder holds {wanted}. Looked in:\n{looked}\n"
            f"{self.how_to_get}"
        )

    def resolve(self, root: str | os.PathLike[str] | None = None, download: bool = False) -> Path:
        """The data folder: found, or (with `download`) fetched into the user cache; else a clear error."""
        folder = self.find(root)
        if folder is not None:
            return folder
        if not download:
            raise self.not_found(root)
        return self.download()

    def download(self) -> Path:
        """`apt-get download` the packages and `dpkg -x` them into `user_cache_dir(name)`, atomically.

        The packages are extracted into a temporary folder beside the target, fsynced and renamed into
        place, so a crash leaves the old state or the whole new one. Needs apt-get and dpkg (Debian/Ubuntu)
        and a reachable Debian/Ubuntu mirror; no root is needed.
        """
        for tool in ("apt-get", "dpkg"):
            if shutil.which(tool) is None:
                raise DatasetNotFoundError(
                    f"download=True for {self.name} needs `{tool}` (Debian/Ubuntu), which is not on PATH. "
                    f"On another system, fetch the .deb files by hand and extract them (`ar x` then "
                    f"`tar xf data.tar.*`) into $LIFELONG_DATA/{self.name}.\n{self.how_to_get}"
                )
        target = user_cache_dir(self.name)
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{self.name}.") as tmp:
            debs, extracted = Path(tmp) / "debs", Path(tmp) / "root"
            debs.mkdir()
            extracted.mkdir()
            # Not opened to apt's `_apt` user: as root apt then downloads unsandboxed (it warns), and no
            # other user can slip a .deb in here before it is extracted.
            self._run(["apt-get", "download", "-q", *self.packages], debs)
            files = sorted(debs.glob("*.deb"))
            if len(files) < len(self.packages):
                raise DatasetNotFoundError(
                    f"apt-get download {' '.join(self.packages)} gave {[f.name for f in files]}; "
                    f"run `sudo apt-get update` and try again.\n{self.how_to_get}"
                )
            for deb in files:
                self._run(["dpkg", "-x", str(deb), str(extracted)], debs)
            if not any((extracted / self.data_path / m).is_file() for m in self.markers):
                raise DatasetNotFoundError(
                    f"the packages {' '.join(self.packages)} hold no {self.data_path}/{self.markers[0]}; "
                    f"this Debian/Ubuntu release lays them out differently. {self.how_to_get}"
                )
            _fsync_tree(extracted)
            if target.exists():
                # the cache folder is ours and lacks the data (else find() had found it): set it aside
                os.replace(target, Path(tmp) / "old")
            os.replace(extracted, target)
            fsync_dir(target.parent)
        return target / self.data_path

    def _run(self, command: list[str], cwd: Path) -> None:
        try:
            subprocess.run(
                command, cwd=cwd, check=True, capture_output=True, text=True, timeout=_DOWNLOAD_TIMEOUT_S
            )
        except subprocess.CalledProcessError as e:
            said = (e.stderr or e.stdout or "").strip()[-1500:]
            hint = " Run `sudo apt-get update` first." if "locate package" in said else ""
            raise DatasetNotFoundError(
                f"`{' '.join(command)}` failed (exit {e.returncode}): {said}.{hint}\n{self.how_to_get}"
            ) from None
        except subprocess.TimeoutExpired:
            raise DatasetNotFoundError(
                f"`{' '.join(command)}` took over {_DOWNLOAD_TIMEOUT_S} s; check the network and the apt "
                f"mirror.\n{self.how_to_get}"
            ) from None


def _display(path: Path) -> str:
    """`path` with the home folder written as `~`, as a user would type it."""
    try:
        return "~/" + str(path.relative_to(Path.home()))
    except ValueError:
        return str(path)


def _fsync_tree(root: Path) -> None:
    for folder, _, files in os.walk(root):
        for name in files:
            path = Path(folder) / name
            if path.is_symlink():
                continue
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(folder))
