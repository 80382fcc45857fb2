"""Text corpora from Debian data packages.

`fortunes`: the fortune-cookie files of Debian `fortunes` + `fortunes-min`, one domain per category
file (43 categories, 15,217 texts, ~442k whitespace-separated words). Short quips, jokes, quotes,
poems and ASCII art: a domain-incremental stream for continual language modelling, or topic labels
for text classification.

>>> corpus = load_fortunes()
>>> len(corpus.domains), sum(len(t) for t in corpus.domains.values())
(43, 15217)
>>> {d: (len(t), sum(len(s.split()) for s in t)) for d, t in corpus.domains.items()}  # texts, words
... # doctest: +NORMALIZE_WHITESPACE
{'art': (465, 14769), 'ascii-art': (10, 767), 'computers': (1051, 39768), 'cookie': (1133, 41147),
 'debian': (85, 2433), 'definitions': (1203, 28706), 'disclaimer': (284, 1628), 'drugs': (208, 7112),
 'education': (203, 6663), 'ethnic': (161, 6007), 'food': (198, 5971), 'fortunes': (431, 4262),
 'goedel': (54, 1187), 'humorists': (197, 7706), 'kids': (150, 5096), 'knghtbrd': (540, 14356),
 'law': (206, 9684), 'linux': (336, 9687), 'linuxcookie': (103, 3180), 'literature': (262, 9381),
 'love': (150, 3728), 'magic': (30, 1702), 'medicine': (74, 3312), 'men-women': (582, 18297),
 'miscellaneous': (651, 8403), 'news': (53, 1971), 'paradoxum': (72, 1023), 'people': (1251, 27254),
 'perl': (273, 6001), 'pets': (52, 1314), 'platitudes': (500, 6151), 'politics': (703, 19862),
 'pratchett': (2, 68), 'riddles': (128, 3715), 'science': (625, 22150), 'songs-poems': (720, 43147),
 'sports': (147, 6695), 'startrek': (227, 4913), 'tao': (82, 6440), 'translate-me': (12, 310),
 'wisdom': (425, 11060), 'work': (630, 18679), 'zippy': (548, 6745)}
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path

from lifelong.datasets.base import TextCorpus, env_data_dir, user_cache_dir
from lifelong.errors import DataError, DatasetNotFoundError

FORTUNES_SUBDIR = "fortunes"
FORTUNES_DIR = Path("/usr/share/games/fortunes")
FORTUNES_HOW_TO_GET = (
    "Get the fortune files with one of:\n"
    "  - Debian/Ubuntu: sudo apt-get install -y fortunes fortunes-min\n"
    "  - without root: apt-get download fortunes fortunes-min && "
    "for f in fortunes*.deb; do dpkg -x $f ~/.cache/lifelong/fortunes; done\n"
    "  - or copy the category files into $LIFELONG_DATA/fortunes and set LIFELONG_DATA"
)
_SEPARATOR = re.compile(r"^%$", re.MULTILINE)  # a line holding only '%' ends each fortune


def fortunes_search_paths(root: str | os.PathLike[str] | None = None) -> list[Path]:
    """Folders searched for the fortune files, in order."""
    paths = [Path(root).expanduser()] if root else []
    env = env_data_dir(FORTUNES_SUBDIR)
    if env is not None:
        paths.append(env)
    # The last entry is where `dpkg -x` puts the files when the .debs are extracted into the cache.
    paths += [FORTUNES_DIR, user_cache_dir(FORTUNES_SUBDIR) / "usr/share/games/fortunes"]
    return paths


def category_files(folder: Path) -> list[Path]:
    """Fortune category files of a folder: regular files other than `.dat` indexes and `.u8` links."""
    if not folder.is_dir():
        return []
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file()
        and not p.is_symlink()
        and not p.name.startswith(".")
        and p.suffix not in (".dat", ".u8")
    )


def find_fortunes(root: str | os.PathLike[str] | None = None) -> Path | None:
    """First searched folder holding at least one category file, or None."""
    for folder in fortunes_search_paths(root):
        if category_files(folder):
            return folder
    return None


def locate_fortunes() -> str | None:
    folder = find_fortunes()
    return str(folder) if folder is not None else None


def read_fortune_file(path: str | os.PathLike[str]) -> list[str]:
    """Split one fortune file into its texts, dropping empty ones.

    Debian ships these files as UTF-8 (the `.u8` names are links to them); older or third-party
    files are latin-1, which is the fallback since it decodes any byte.
    """
    raw = Path(path).read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    text = text.replace("\r\n", "\n")
    # Strip only newlines: leading spaces carry the layout of ASCII art and verse.
    return [_undo_double_utf8(t.strip("\n")) for t in _SEPARATOR.split(text) if t.strip()]


def _undo_double_utf8(text: str) -> str:
    """Repair UTF-8 that was encoded twice (or three times) upstream, e.g. 'Â£5' -> '£5'.

    A few Debian fortunes (computers, law, pets) carry such mojibake. Text that is not of this shape
    fails the latin-1 encode or the UTF-8 decode and is returned unchanged.
    """
    for _ in range(3):
        if text.isascii():
            break
        try:
            fixed = text.encode("latin-1").decode("utf-8")
        except UnicodeError:
            break
        text = fixed
    return text


def load_fortunes(root: str | None = None, categories: Iterable[str] | None = None) -> TextCorpus:
    """The fortune files as a `TextCorpus` with one domain per category (all, or just `categories`)."""
    folder = find_fortunes(root)
    if folder is None:
        looked = "\n".join(f"  {p}" for p in fortunes_search_paths(root))
        raise DatasetNotFoundError(f"fortune files not found. Looked in:\n{looked}\n{FORTUNES_HOW_TO_GET}")
    files = {p.name: p for p in category_files(folder)}
    if categories is not None:
        wanted = list(categories)
        unknown = [c for c in wanted if c not in files]
        if unknown:
            raise DataError(
                f"unknown fortune categories {unknown}; available in {folder}: {', '.join(files)}"
            )
        files = {c: files[c] for c in wanted}
    domains = {name: texts for name, path in files.items() if (texts := read_fortune_file(path))}
    return TextCorpus("fortunes", domains, source=str(folder))
