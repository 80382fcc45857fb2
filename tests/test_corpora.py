"""The Debian text sources: austen, kjv, python_docs, gcide, wordnet_glosses."""

from __future__ import annotations

import doctest
import os
import stat
from pathlib import Path

import pytest

from lifelong import datasets as D
from lifelong.datasets import corpora, debian, lexicons
from lifelong.errors import DataError, DatasetNotFoundError

# name: (domains in order, documents, words (whitespace-separated) within 5%)
EXPECTED = {
    "austen": (
        [
            "sense_and_sensibility",
            "pride_and_prejudice",
            "mansfield_park",
            "emma",
            "northanger_abbey",
            "persuasion",
        ],
        269,
        716_746,
    ),
    "kjv": (["law", "history", "wisdom", "prophets", "gospels", "epistles"], 1189, 789_634),
    "python_docs": (
        [
            "tutorial",
            "using",
            "howto",
            "faq",
            "library",
            "reference",
            "extending",
            "c-api",
            "packaging",
            "whatsnew",
            "general",
        ],
        496,
        1_397_302,
    ),
    "gcide": (["a-b", "c-d", "e-h", "i-m", "n-r", "s", "t-z"], 126_236, 4_939_505),
    "wordnet_glosses": (["noun", "verb", "adj", "adv"], 117_659, 1_748_433),
}
PACKAGES = {
    "austen": "r-cran-janeaustenr",
    "kjv": "bible-kjv bible-kjv-text",
    "python_docs": "python3.11-doc",
    "gcide": "dict-gcide",
    "wordnet_glosses": "wordnet-base",
}
_LOADED: dict[str, D.TextCorpus] = {}


def _corpus(name: str) -> D.TextCorpus:
    """Each source loaded once per session (gcide takes ~2 s)."""
    if D.info(name).locate() is None:
        pytest.skip(f"{name} is not on this machine (`make data` gets it): {D.info(name).how_to_get}")
    if name not in _LOADED:
        corpus = D.load(name)
        assert isinstance(corpus, D.TextCorpus)
        _LOADED[name] = corpus
    return _LOADED[name]


@pytest.fixture
def nothing_installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No copy anywhere: $LIFELONG_DATA, the user cache and the system root are empty folders."""
    monkeypatch.setenv("LIFELONG_DATA", str(tmp_path / "env"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(debian, "SYSTEM_ROOT", tmp_path / "system")
    return tmp_path


@pytest.mark.parametrize("name", list(EXPECTED))
def test_source_loads_with_its_domains_and_counts(name: str) -> None:
    corpus = _corpus(name)
    domains, documents, words = EXPECTED[name]
    assert corpus.name == name and list(corpus.domains) == domains
    assert sum(len(d) for d in corpus.domains.values()) == documents
    counted = sum(len(doc.split()) for docs in corpus.domains.values() for doc in docs)
    assert abs(counted - words) < 0.05 * words
    assert all(isinstance(doc, str) and doc.strip() for docs in corpus.domains.values() for doc in docs)
    assert D.info(name).extra == {"domains": len(domains), "texts": documents}


def test_austen_chapters_are_clean_prose() -> None:
    corpus = _corpus("austen")
    first = corpus.domains["sense_and_sensibility"][0]
    assert first.startswith("The family of Dashwood had long been settled in Sussex.")
    assert "\n\n" in first and "  " not in first  # paragraphs, wrapped lines joined
    everything = "\n".join(doc for docs in corpus.domains.values() for doc in docs)
    for leftover in ("CHAPTER", "Chapter 1\n", "VOLUME", "THE END", "FINIS", "A NOTE ON THE TEXT", " _"):
        assert leftover not in everything
    assert "Emma Woodhouse, handsome, clever, and rich" in corpus.domains["emma"][0]


def test_kjv_chapters_hold_verses_without_references() -> None:
    corpus = _corpus("kjv")
    genesis_1 = corpus.domains["law"][0].split("\n")
    assert len(genesis_1) == 31 and genesis_1[0] == "In the beginning God created the heaven and the earth."
    last = corpus.domains["epistles"][-1].split("\n")[-1]
    assert last == "The grace of our Lord Jesus Christ be with you all. Amen."
    assert corpus.domains["gospels"][0].startswith("The book of the generation of Jesus Christ")
    assert len(corpus.domains["wisdom"]) == 42 + 150 + 31 + 12 + 8  # Job, Psalms, Proverbs, Eccl., Song


def test_python_docs_sections() -> None:
    corpus = _corpus("python_docs")
    assert len(corpus.domains["library"]) == 317 and len(corpus.domains["packaging"]) == 16
    assert any(doc.startswith(":mod:`os` --- ") for doc in corpus.domains["library"])
    assert not any("wasm-notavail" in doc[:200] for doc in corpus.domains["general"])


def test_gcide_entries_are_split_and_cleaned() -> None:
    corpus = _corpus("gcide")
    first = corpus.domains["a-b"][0]
    assert first.startswith("0 \\0\\ adj.")  # the file header's quotation is cut off
    apple = [e for e in corpus.domains["a-b"] if e.startswith("Apple \\Ap\"ple\\ ([a^]p\"p'l), n.")]
    assert len(apple) == 1 and "\n   Apple blight, an aphid" in apple[0]
    sample = corpus.domains["s"][::50]
    assert not any("[1913 Webster]" in e or "{" in e or "\n\n\n" in e for e in sample)
    assert corpus.domains["t-z"][-1].startswith("Zythepsary")


def test_wordnet_glosses_are_lemma_colon_gloss() -> None:
    corpus = _corpus("wordnet_glosses")
    noun = corpus.domains["noun"]
    assert noun[0].startswith("entity: that which is perceived or known or inferred")
    assert any(g.startswith("abstraction, abstract entity: ") for g in noun[:5])
    assert not any("(a)" in g.split(":")[0] or "_" in g.split(":")[0] for g in corpus.domains["adj"][:2000])
    assert len(corpus.domains["adv"]) == 3621


def test_registry_lists_the_text_sources() -> None:
    names = D.names()
    for name, packages in PACKAGES.items():
        assert name in names
        info = D.info(name)
        assert info.kind == "text" and info.description
        assert f"apt-get download {packages}" in info.how_to_get
        assert f'load("{name}", download=True)' in info.how_to_get
        where = info.locate()
        if where is not None:
            assert Path(where).is_dir()
    apt_install = "sudo apt-get install -y --no-install-recommends"
    assert f"{apt_install} wordnet-base" in D.info("wordnet_glosses").how_to_get
    assert f"{apt_install} bible-kjv bible-kjv-text" in D.info("kjv").how_to_get
    assert "apt-get install" not in D.info("gcide").how_to_get  # it would pull dictd, a daemon


@pytest.mark.parametrize("name", list(EXPECTED))
def test_missing_source_names_the_paths_and_the_commands(nothing_installed: Path, name: str) -> None:
    assert D.info(name).locate() is None
    with pytest.raises(DatasetNotFoundError) as err:
        D.load(name, root=str(nothing_installed / "mine"))
    message = str(err.value)
    assert f"apt-get download {PACKAGES[name]} && " in message
    assert "dpkg -x" in message and f"{nothing_installed / 'cache' / 'lifelong' / name}" in message
    for looked in ("mine", "env", "system", "cache"):
        assert str(nothing_installed / looked) in message


def test_root_may_be_the_data_folder_or_the_extraction_root(monkeypatch: pytest.MonkeyPatch) -> None:
    where = D.info("wordnet_glosses").locate()
    if where is None:
        pytest.skip("wordnet-base is not on this machine")
    data = Path(where)
    assert lexicons.load_wordnet_glosses(root=str(data)).source == str(data)
    extraction_root = Path(str(data)[: -len(lexicons.WORDNET.data_path)])
    assert lexicons.load_wordnet_glosses(root=str(extraction_root)).source == str(data)


def test_lifelong_data_folder_is_searched(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    where = D.info("wordnet_glosses").locate()
    if where is None:
        pytest.skip("wordnet-base is not on this machine")
    (tmp_path / "wordnet_glosses").symlink_to(where)
    monkeypatch.setenv("LIFELONG_DATA", str(tmp_path))
    corpus = D.load("wordnet_glosses")
    assert isinstance(corpus, D.TextCorpus) and corpus.source == str(tmp_path / "wordnet_glosses")


def _fake_bible_text() -> str:
    books = [f"B{chr(97 + i // 26)}{chr(97 + i % 26)}" for i in range(66)]
    return "".join(f"{b}{c}:1 Verse one of {b} {c}.\n{b}{c}:2 Verse two.\n" for b in books for c in (1, 2))


def test_kjv_reads_a_kjv_txt_file(tmp_path: Path) -> None:
    (tmp_path / "kjv.txt").write_text(_fake_bible_text())
    corpus = corpora.load_kjv(root=str(tmp_path))
    assert {d: len(c) for d, c in corpus.domains.items()} == {
        "law": 10, "history": 24, "wisdom": 10, "prophets": 34, "gospels": 10, "epistles": 44
    }  # fmt: skip
    assert corpus.domains["law"][0] == "Verse one of Baa 1.\nVerse two."


def test_kjv_text_with_the_wrong_books_is_refused(tmp_path: Path) -> None:
    (tmp_path / "kjv.txt").write_text("Ge1:1 In the beginning.\nEx1:1 Now these are the names.\n")
    with pytest.raises(DataError, match="found 2 books, expected 66"):
        corpora.load_kjv(root=str(tmp_path))


def _script(folder: Path, name: str, body: str) -> None:
    path = folder / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def _fake_debian_tools(folder: Path) -> None:
    """apt-get and dpkg stand-ins: `apt-get download` writes a .deb, `dpkg -x` lays out WordNet files."""
    folder.mkdir()
    each_package = 'case $p in download|-q) ;; *) : > "${p}_1.0_all.deb";; esac'
    _script(folder, "apt-get", f'for p in "$@"; do {each_package}; done\n')
    lines = "  1 licence header\\n00001740 03 n 01 entity 0 000 | that which exists  \\n"
    _script(
        folder,
        "dpkg",
        'd="$3/usr/share/wordnet"; mkdir -p "$d"\n'
        f'for f in noun verb adj adv; do printf "{lines}" > "$d/data.$f"; done\n',
    )


def test_download_extracts_into_the_cache_atomically(
    nothing_installed: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tools = nothing_installed / "bin"
    _fake_debian_tools(tools)
    monkeypatch.setenv("PATH", f"{tools}{os.pathsep}{os.environ['PATH']}")
    stale = nothing_installed / "cache" / "lifelong" / "wordnet_glosses"
    stale.mkdir(parents=True)
    (stale / "half-written").write_text("from a crash")
    with pytest.raises(DatasetNotFoundError):
        lexicons.load_wordnet_glosses()  # without download=True nothing is fetched
    corpus = lexicons.load_wordnet_glosses(download=True)
    assert corpus.domains == {p: ["entity: that which exists"] for p in ("noun", "verb", "adj", "adv")}
    assert corpus.source == str(stale / "usr/share/wordnet")
    assert not (stale / "half-written").exists()  # the stale folder was replaced whole
    assert [p.name for p in stale.parent.iterdir()] == ["wordnet_glosses"]  # no temporary folder left


def test_download_without_apt_says_so(nothing_installed: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(nothing_installed / "no-tools"))
    with pytest.raises(DatasetNotFoundError, match="needs `apt-get`"):
        D.load("gcide", download=True)
    assert not (nothing_installed / "cache" / "lifelong" / "gcide").exists()


def test_download_failure_shows_apt_and_leaves_nothing(
    nothing_installed: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tools = nothing_installed / "bin"
    tools.mkdir()
    _script(tools, "apt-get", 'echo "E: Unable to locate package $3" >&2; exit 100\n')
    _script(tools, "dpkg", "exit 0\n")
    monkeypatch.setenv("PATH", f"{tools}{os.pathsep}{os.environ['PATH']}")
    with pytest.raises(DatasetNotFoundError, match="Unable to locate package.*sudo apt-get update"):
        D.load("austen", download=True)
    assert list((nothing_installed / "cache" / "lifelong").iterdir()) == []


def test_lazyload_reader_rejects_unknown_compression() -> None:
    with pytest.raises(DataError, match="unknown type"):
        corpora._inflate(b"Qxyz", 3)


def test_doctests() -> None:
    assert doctest.testmod(debian).failed == 0
    lexicon_doc = lexicons.gcide_clean("{Pome}, n.\n   [1913 Webster +PJC]\n")
    assert lexicon_doc == "Pome, n.\n"
    if D.info("wordnet_glosses").locate() is not None:
        assert doctest.testmod(lexicons).failed == 0
    if D.info("kjv").locate() is not None:
        assert doctest.testmod(corpora).failed == 0
