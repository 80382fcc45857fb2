import doctest

import numpy as np
import pytest
import torch

from lifelong.datasets.base import TextCorpus
from lifelong.errors import DataError
from lifelong.streams import text
from lifelong.streams.text import ByteTokenizer, group_domains, text_domains, vocab_size


def sentences(word: str, n: int) -> list[str]:
    return [f"{word} number {i} goes here, with a café." for i in range(n)]


@pytest.fixture
def corpus() -> TextCorpus:
    return TextCorpus(
        "toy",
        {"law": sentences("statute", 40), "food": sentences("noodle", 30), "sea": sentences("wave", 50)},
        source="tests",
    )


def source_text(corpus: TextCorpus, domain: str, separator: str = "\n\n") -> bytes:
    return separator.join(corpus.domains[domain]).encode("utf-8")


def test_byte_tokenizer_round_trip():
    tok = ByteTokenizer()
    s = "naïve ☃ text"
    assert tok.encode(s) == list(s.encode("utf-8"))
    assert tok.decode(tok.encode(s)) == s
    assert tok.decode(torch.tensor(tok.encode(s))) == s
    assert vocab_size(tok) == 256 == len(tok) == tok.vocab_size
    with pytest.raises(DataError, match="0..255"):
        tok.decode([300])


def test_stream_shape_and_order(corpus):
    s = text_domains(corpus, block_size=16)
    assert s.kind == "language_modeling" and s.num_classes == 256 and s.input_shape == (16,)
    assert s.name == "toy-domains"
    assert [e.domain for e in s] == ["law", "food", "sea"]
    assert [e.id for e in s] == [0, 1, 2]
    for e in s:
        assert e.classes is None
        for split in (e.train, e.test):
            assert split.x.dtype == torch.int64 and split.y.dtype == torch.int64
            assert split.x.shape[1] == 16 and split.y.shape == split.x.shape
        n_tokens = len(source_text(corpus, e.domain))
        n_blocks = n_tokens // 17
        assert e.info == {"tokens": n_tokens, "blocks": n_blocks}
        assert len(e.test) == max(1, round(n_blocks * 0.1))
        assert len(e.train) + len(e.test) == n_blocks
    s = text_domains(corpus, domains=["sea", "law"], block_size=16)
    assert [e.domain for e in s] == ["sea", "law"]


def test_packing_is_exact(corpus):
    block = 12
    s = text_domains(corpus, block_size=block)
    for e in s:
        src = np.frombuffer(source_text(corpus, e.domain), dtype=np.uint8).astype(np.int64)
        n = len(src) // (block + 1)
        blocks = torch.from_numpy(src[: n * (block + 1)].reshape(n, block + 1))
        both = torch.cat(
            [torch.cat([e.train.x, e.train.y[:, -1:]], 1), torch.cat([e.test.x, e.test.y[:, -1:]], 1)]
        )
        # the splits partition the non-overlapping source blocks (as multisets)
        assert sorted(both.tolist()) == sorted(blocks.tolist())
        for split in (e.train, e.test):
            assert torch.equal(split.y[:, :-1], split.x[:, 1:])  # y is x shifted by one
            assert all(bytes(x.tolist()) in source_text(corpus, e.domain) for x in split.x)


def test_decode_round_trips_ascii_block():
    corpus = TextCorpus("c", {"d": ["the quick brown fox jumps over the lazy dog " * 5]})
    s = text_domains(corpus, block_size=10)
    tok = ByteTokenizer()
    joined = corpus.domains["d"][0]
    for e in s:
        for split in (e.train, e.test):
            for x, y in zip(split.x, split.y, strict=True):
                full = tok.decode(torch.cat([x, y[-1:]]))
                assert full in joined and tok.decode(x) == full[:-1] and tok.decode(y) == full[1:]


def test_held_out_blocks_disjoint_from_train():
    # every block is unique text, so equal content means the same block
    domains = {d: ["".join(f"{d}{i:04d}" for i in range(300))] for d in ("p", "q")}
    s = text_domains(TextCorpus("c", domains), block_size=7, test_fraction=0.2)
    for e in s:
        train = {tuple(r) for r in e.train.x.tolist()}
        test = {tuple(r) for r in e.test.x.tolist()}
        assert len(train) == len(e.train) and len(test) == len(e.test)
        assert not train & test
        assert len(e.test) == round(e.info["blocks"] * 0.2)
        assert len(e.train) + len(e.test) == e.info["blocks"]


def test_determinism_and_seed(corpus):
    a = text_domains(corpus, block_size=8, seed=3)
    b = text_domains(corpus, block_size=8, seed=3)
    c = text_domains(corpus, block_size=8, seed=4)
    for ea, eb in zip(a, b, strict=True):
        assert torch.equal(ea.train.x, eb.train.x) and torch.equal(ea.test.y, eb.test.y)
    assert not all(torch.equal(ea.test.x, ec.test.x) for ea, ec in zip(a, c, strict=True))
    # a domain's split does not depend on which other domains are selected
    alone = text_domains(corpus, domains=["sea"], block_size=8, seed=3)
    assert torch.equal(alone[0].test.x, a[2].test.x)


def test_max_blocks_per_domain(corpus):
    full = text_domains(corpus, block_size=8)
    capped = text_domains(corpus, block_size=8, max_blocks_per_domain=5)
    for ef, ec in zip(full, capped, strict=True):
        assert len(ec.train) == 5
        assert torch.equal(ef.test.x, ec.test.x)  # held-out set unchanged
        full_rows = {tuple(r) for r in ef.train.x.tolist()}
        assert all(tuple(r) in full_rows for r in ec.train.x.tolist())
    assert torch.equal(
        capped[0].train.x, text_domains(corpus, block_size=8, max_blocks_per_domain=5)[0].train.x
    )


def test_separator_is_used():
    corpus = TextCorpus("c", {"d": ["aaaa", "bbbb", "cccc", "dddd"]})
    e = text_domains(corpus, block_size=4, separator="|", test_fraction=0.3)[0]
    rows = sorted(
        bytes(torch.cat([x, y[-1:]]).tolist())
        for s in (e.train, e.test)
        for x, y in zip(s.x, s.y, strict=True)
    )
    assert rows == [b"aaaa|", b"bbbb|", b"cccc|"]


class WordTokenizer:
    """A tiny stand-in for a Hugging Face tokenizer: encode + __len__."""

    def __init__(self, words):
        self.ids = {w: i for i, w in enumerate(words)}

    def encode(self, s):
        return [self.ids[w] for w in s.split()]

    def __len__(self):
        return len(self.ids)


class AttrTokenizer:
    vocab_size = 7

    def encode(self, s):
        return [len(w) % 7 for w in s.split()]


def test_custom_tokenizers():
    corpus = TextCorpus("w", {"d": ["a b c d e f g h i j k l"] * 4})
    tok = WordTokenizer("a b c d e f g h i j k l".split())
    s = text_domains(corpus, block_size=3, tokenizer=tok)
    assert s.num_classes == 12 and s.info["tokenizer"] == "WordTokenizer"
    assert s[0].info["tokens"] == 48
    s = text_domains(corpus, block_size=3, tokenizer=AttrTokenizer())
    assert s.num_classes == 7


def test_tokenizer_errors():
    corpus = TextCorpus("w", {"d": ["a b c d e f g h i j k l"] * 4})

    class NoVocab:
        def encode(self, s):
            return [1, 2]

    with pytest.raises(DataError, match="no vocab_size attribute or __len__"):
        text_domains(corpus, block_size=3, tokenizer=NoVocab())
    with pytest.raises(DataError, match="no encode"):
        text_domains(corpus, block_size=3, tokenizer=object())
    small = WordTokenizer("a b c d e f g h i j k l".split())
    small.ids["l"] = 99
    with pytest.raises(DataError, match=r"ids 0\.\.99 .* outside its vocabulary of 12"):
        text_domains(corpus, block_size=3, tokenizer=small)


def test_errors(corpus):
    with pytest.raises(
        DataError, match=r"unknown domains \['mars'\] in corpus 'toy'; available: law, food, sea"
    ):
        text_domains(corpus, domains=["law", "mars"])
    with pytest.raises(DataError, match="block_size must be an integer >= 2"):
        text_domains(corpus, block_size=1)
    with pytest.raises(DataError, match="test_fraction"):
        text_domains(corpus, test_fraction=0.0)
    with pytest.raises(DataError, match="max_blocks_per_domain"):
        text_domains(corpus, max_blocks_per_domain=0)
    with pytest.raises(DataError, match="more than once"):
        text_domains(corpus, domains=["law", "law"])
    with pytest.raises(DataError, match="no domains selected"):
        text_domains(corpus, domains=[])


def test_short_domain_error():
    corpus = TextCorpus("c", {"big": ["x" * 1000], "tiny": ["hello world"]})
    with pytest.raises(DataError, match=r"domain 'tiny' has 11 tokens; block_size=8 needs at least 18"):
        text_domains(corpus, block_size=8)
    with pytest.raises(DataError, match=r"domain 'tiny' has 11 tokens; block_size=64 needs at least 130"):
        text_domains(corpus)
    s = text_domains(corpus, block_size=4)  # 11 tokens -> 2 blocks of 5
    assert len(s[1].train) == 1 and len(s[1].test) == 1


def test_group_domains(corpus):
    g = group_domains(corpus, {"land": ["law", "food"]})
    assert list(g.domains) == ["land", "sea"]
    assert g.domains["land"] == corpus.domains["law"] + corpus.domains["food"]
    assert g.name == "toy" and g.source == "tests"
    assert corpus.domains.keys() == {"law", "food", "sea"}  # input untouched
    s = text_domains(g, domains=["land"], block_size=16)
    assert [e.domain for e in s] == ["land"]
    g = group_domains(corpus, {"b": ["sea", "law"], "a": ["food"]})
    assert list(g.domains) == ["b", "a"] and g.domains["b"][0] == corpus.domains["sea"][0]
    assert list(group_domains(corpus, {"law": ["law", "sea"]}).domains) == ["law", "food"]


def test_group_domains_errors(corpus):
    with pytest.raises(DataError, match=r"unknown domains \['moon'\].*available: law, food, sea"):
        group_domains(corpus, {"x": ["law", "moon"]})
    with pytest.raises(DataError, match=r"domain 'law' is in both groups 'x' and 'y'"):
        group_domains(corpus, {"x": ["law"], "y": ["law", "sea"]})
    with pytest.raises(DataError, match=r"group names \['sea'\] are also names of ungrouped domains"):
        group_domains(corpus, {"sea": ["law", "food"]})
    with pytest.raises(DataError, match="group 'e' has no domains"):
        group_domains(corpus, {"e": []})


def test_docstring_examples():
    assert doctest.testmod(text).failed == 0
