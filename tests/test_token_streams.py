"""token_domains: batched tokenizing with real tokenizers, packing, budgets, hold-out and the token cache."""

from __future__ import annotations

import random
import time

import numpy as np
import pytest
import torch

from lifelong.datasets.base import TextCorpus
from lifelong.errors import DataError, DatasetNotFoundError
from lifelong.lm.bpe import train_bpe
from lifelong.lm.tokens import token_domains
from lifelong.streams.text import ByteTokenizer

WORDS = "court held contract void appeal ruling whisk eggs sugar flour bake cake oven icing".split()


def _docs(prefix: str, count: int) -> list[str]:
    """Distinct documents (numbered), so that every packed block is unique and can be located."""
    rng = random.Random(prefix)
    return [f"{prefix} {i}: " + " ".join(rng.choice(WORDS) for _ in range(12)) for i in range(count)]


CORPUS = TextCorpus("toy", {"law": _docs("law", 60), "cook": _docs("cook", 50)}, source="test")


@pytest.fixture(scope="module")
def bpe(tmp_path_factory):
    """A tiny trained BPE (vocabulary ~400) standing in for a real tokenizer."""
    return train_bpe(CORPUS, vocab_size=400, cache_dir=tmp_path_factory.mktemp("bpe"))


def _expected(tok, docs: list[str]) -> list[int]:
    """The domain's token sequence built by hand: documents tokenized one by one, EOS between them."""
    out: list[int] = []
    for i, doc in enumerate(docs):
        if i:
            out.append(tok.eos_token_id)
        out.extend(tok(doc, add_special_tokens=False)["input_ids"])
    return out


def _positions(split, expected: list[int], span: int) -> list[int]:
    """Index of each row of `split` among the blocks of `expected`; fails if a row is not such a block."""
    n = len(expected) // span
    index = {tuple(expected[i * span : (i + 1) * span]): i for i in range(n)}
    assert len(index) == n, "test corpus must give distinct blocks"
    rows = torch.cat([split.x, split.y[:, -1:]], dim=1)
    assert torch.equal(split.x[:, 1:], split.y[:, :-1])  # y is x shifted by one token
    return [index[tuple(row.tolist())] for row in rows]


class CountingTokenizer:
    """A plain encode() tokenizer that counts calls (bytes, vocabulary 256)."""

    vocab_size = 256

    def __init__(self) -> None:
        self.calls = 0

    def encode(self, text: str) -> list[int]:
        self.calls += 1
        return list(text.encode())


def _counting_hf(bpe):
    """A Hugging Face fast tokenizer with the BPE's vocabulary whose batched calls are counted."""
    from transformers import PreTrainedTokenizerFast

    class Counting(PreTrainedTokenizerFast):
        calls = 0

        def __call__(self, *args, **kwargs):
            type(self).calls += 1
            return super().__call__(*args, **kwargs)

    return Counting(tokenizer_object=bpe.backend_tokenizer, eos_token="<|endoftext|>")


def test_packing_shift_and_eos_between_documents(bpe, tmp_path):
    block = 16
    stream = token_domains(CORPUS, bpe, block_size=block, cache_dir=tmp_path)
    assert stream.kind == "language_modeling" and stream.input_shape == (block,)
    assert stream.num_classes == len(bpe)
    assert stream.info["eos_id"] == 0 and stream.info["separator"] is None
    for e, name in zip(stream, ["law", "cook"], strict=True):
        expected = _expected(bpe, CORPUS.domains[name])
        assert expected.count(0) == len(CORPUS.domains[name]) - 1  # between documents, none after the last
        assert e.domain == name and e.train.x.dtype == e.train.y.dtype == torch.int64
        train, test = _positions(e.train, expected, block + 1), _positions(e.test, expected, block + 1)
        n = len(expected) // (block + 1)
        # every block is used once, in text order within a split, and no test block is trained on
        assert sorted(train + test) == list(range(n)) and train == sorted(train) and test == sorted(test)
        assert len(test) == round(n * 0.1)
        assert e.info == {
            "tokens": len(expected),
            "train_tokens": len(train) * block,
            "test_tokens": len(test) * block,
            "documents": len(CORPUS.domains[name]),
            "blocks": n,
        }
        assert stream.info["tokens"][name] == len(expected)


def test_tokenizers_library_tokenizer_gives_the_same_blocks(bpe, tmp_path):
    via_hf = token_domains(CORPUS, bpe, block_size=16, cache_dir=tmp_path / "hf")
    via_backend = token_domains(CORPUS, bpe.backend_tokenizer, block_size=16, cache_dir=tmp_path / "tk")
    assert via_backend.info["eos_id"] == 0  # found as <|endoftext|> in the vocabulary
    assert via_backend.num_classes == len(bpe)
    for a, b in zip(via_hf, via_backend, strict=True):
        assert torch.equal(a.train.x, b.train.x) and torch.equal(a.test.y, b.test.y)


def test_byte_tokenizer_joins_documents_with_blank_lines(tmp_path):
    corpus = TextCorpus("toy", {"law": _docs("law", 40)})
    stream = token_domains(corpus, ByteTokenizer(), block_size=32, cache_dir=tmp_path)
    expected = list("\n\n".join(corpus.domains["law"]).encode())
    e = stream[0]
    assert sorted(_positions(e.train, expected, 33) + _positions(e.test, expected, 33)) == list(
        range(len(expected) // 33)
    )
    assert stream.info["eos_id"] is None and stream.info["separator"] == "\n\n"
    assert stream.num_classes == 256


def test_budgets_cap_blocks_and_stay_nested(bpe, tmp_path):
    full = token_domains(CORPUS, bpe, block_size=16, cache_dir=tmp_path)
    capped = token_domains(
        CORPUS, bpe, block_size=16, max_tokens=5 * 16 + 7, max_test_tokens=2 * 16, cache_dir=tmp_path
    )
    for f, c in zip(full, capped, strict=True):
        assert (len(c.train), len(c.test)) == (5, 2)
        assert (c.info["train_tokens"], c.info["test_tokens"]) == (80, 32)
        assert c.info["tokens"] == f.info["tokens"]
        # a smaller budget keeps a subset of what the full stream trains and tests on
        full_train = {tuple(r) for r in f.train.x.tolist()}
        full_test = {tuple(r) for r in f.test.x.tolist()}
        assert {tuple(r) for r in c.train.x.tolist()} <= full_train
        assert {tuple(r) for r in c.test.x.tolist()} <= full_test
    assert capped.info["max_tokens"] == 87


def test_same_seed_same_blocks_other_seed_other_test_blocks(bpe, tmp_path):
    a = token_domains(CORPUS, bpe, block_size=16, seed=3, cache_dir=tmp_path)
    b = token_domains(CORPUS, bpe, block_size=16, seed=3, cache_dir=tmp_path)
    c = token_domains(CORPUS, bpe, block_size=16, seed=4, cache_dir=tmp_path)
    for ea, eb, ec in zip(a, b, c, strict=True):
        assert torch.equal(ea.train.x, eb.train.x) and torch.equal(ea.test.x, eb.test.x)
        assert not torch.equal(ea.test.x, ec.test.x)
    # the domain name seeds the draw too: two domains do not hold out the same block positions
    law, cook = (_positions(e.test, _expected(bpe, CORPUS.domains[e.domain]), 17) for e in a)
    assert law != cook


def test_second_call_reads_the_cache_without_tokenizing(bpe, tmp_path):
    tok = _counting_hf(bpe)
    first = token_domains(CORPUS, tok, block_size=16, cache_dir=tmp_path)
    calls = type(tok).calls
    assert calls >= 2  # at least one batched call per domain
    files = sorted(p.name for p in tmp_path.rglob("*") if p.is_file())
    assert len(files) == 4 and sum(f.endswith(".npy") for f in files) == 2
    cached = np.load(next(tmp_path.rglob("*.npy")))
    assert cached.dtype == np.uint16  # a vocabulary of 400 fits in 16 bits
    second = token_domains(CORPUS, tok, block_size=16, cache_dir=tmp_path)
    assert type(tok).calls == calls
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a.train.x, b.train.x) and torch.equal(a.test.y, b.test.y)
        assert a.info == b.info


def test_cache_is_keyed_by_text_and_tokenizer(bpe, tmp_path):
    tok = _counting_hf(bpe)
    token_domains(CORPUS, tok, block_size=16, cache_dir=tmp_path)
    before = type(tok).calls
    law = list(CORPUS.domains["law"])
    law[7] = law[7][:-1] + "X"  # one character
    changed = TextCorpus("toy", {"law": law, "cook": CORPUS.domains["cook"]})
    stream = token_domains(changed, tok, block_size=16, cache_dir=tmp_path)
    assert type(tok).calls == before + 1  # only the changed domain (one chunk) is tokenized again
    assert len(list(tmp_path.rglob("*.npy"))) == 3
    assert stream[0].info["tokens"] == len(_expected(bpe, law))
    # documents split differently are other text: ["ab", "c"] is not ["a", "bc"]
    split = TextCorpus("s", {"a": ["ab" * 40, "c" * 40], "b": ["a" * 40, "bc" * 40]})
    token_domains(split, ByteTokenizer(), block_size=8, cache_dir=tmp_path)
    assert len(list(tmp_path.rglob("*.npy"))) == 5
    # another tokenizer (bytes; the BPE with an added token) gets its own entries
    token_domains(CORPUS, ByteTokenizer(), block_size=16, cache_dir=tmp_path)
    assert len(list(tmp_path.rglob("*.npy"))) == 7
    extended = _counting_hf(bpe)
    extended.add_tokens(["<extra>"])
    calls = type(extended).calls
    s = token_domains(CORPUS, extended, block_size=16, cache_dir=tmp_path)
    assert type(extended).calls > calls and len(list(tmp_path.rglob("*.npy"))) == 9
    assert s.num_classes == len(bpe) + 1  # len(tokenizer) counts added tokens


@pytest.mark.parametrize("damage", ["truncate", "flip", "sidecar", "no-sidecar"])
def test_damaged_cache_entry_is_rebuilt(bpe, tmp_path, damage):
    corpus = TextCorpus("toy", {"law": CORPUS.domains["law"]})
    good = token_domains(corpus, bpe, block_size=16, cache_dir=tmp_path)
    (npy,) = tmp_path.rglob("*.npy")
    sidecar = npy.with_suffix(".json")
    data = npy.read_bytes()
    if damage == "truncate":
        npy.write_bytes(data[: len(data) // 2])
    elif damage == "flip":  # same size, one token changed: only the checksum can tell
        npy.write_bytes(data[:-2] + bytes([data[-2] ^ 1]) + data[-1:])
    elif damage == "sidecar":
        sidecar.write_text("{not json")
    else:
        sidecar.unlink()
    with pytest.warns(UserWarning, match="token cache .* tokenizing again"):
        again = token_domains(corpus, bpe, block_size=16, cache_dir=tmp_path)
    assert torch.equal(good[0].train.x, again[0].train.x) and torch.equal(good[0].test.x, again[0].test.x)
    assert npy.read_bytes() == data  # rewritten whole
    token_domains(corpus, bpe, block_size=16, cache_dir=tmp_path)  # and trusted again: no warning


def test_large_vocabulary_is_cached_as_int32(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {f"w{i}": i for i in range(70_000)}
    vocab["</s>"] = 70_000
    vocab["[UNK]"] = 70_001
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    docs = [" ".join(f"w{(i * 977 + k * 65_531) % 70_000}" for k in range(30)) for i in range(20)]
    stream = token_domains(TextCorpus("big", {"d": docs}), tok, block_size=8, cache_dir=tmp_path)
    (npy,) = tmp_path.rglob("*.npy")
    cached = np.load(npy)
    assert cached.dtype == np.int32 and cached.max() >= 65_536
    assert stream.info["eos_id"] == 70_000 and stream.num_classes == 70_002
    assert int(stream[0].train.x.max()) >= 65_536  # ids above 16 bits survive the cache
    again = token_domains(TextCorpus("big", {"d": docs}), tok, block_size=8, cache_dir=tmp_path)
    assert torch.equal(stream[0].train.x, again[0].train.x)


def test_plain_encode_tokenizer_works_and_is_not_cached(tmp_path):
    tok = CountingTokenizer()
    stream = token_domains(CORPUS, tok, block_size=16, cache_dir=tmp_path)
    assert tok.calls == len(CORPUS.domains["law"]) + len(CORPUS.domains["cook"]) + 1  # + the separator
    assert stream.info["tokenizer_hash"] is None and not any(tmp_path.iterdir())
    # same bytes as the byte tokenizer, which joins documents with the same "\n\n"
    reference = token_domains(CORPUS, ByteTokenizer(), block_size=16, cache_dir=tmp_path)
    assert torch.equal(stream[0].train.x, reference[0].train.x)


def test_short_domain_and_small_budget_errors_write_nothing(bpe, tmp_path):
    corpus = TextCorpus("toy", {"law": CORPUS.domains["law"], "tiny": ["just a few words"]})
    with pytest.raises(DataError, match=r"domain 'tiny' \(\d+ tokens\) is too short for block_size=16"):
        token_domains(corpus, bpe, block_size=16, cache_dir=tmp_path)
    assert not any(tmp_path.iterdir())  # checked before any cache entry is written
    with pytest.raises(DataError, match="max_tokens=10 is below one block of block_size=16"):
        token_domains(CORPUS, bpe, block_size=16, max_tokens=10, cache_dir=tmp_path)
    with pytest.raises(DataError, match="max_test_tokens=15 is below one block"):
        token_domains(CORPUS, bpe, block_size=16, max_test_tokens=15, cache_dir=tmp_path)
    with pytest.raises(DataError, match="block_size must be an integer >= 2"):
        token_domains(CORPUS, bpe, block_size=1, cache_dir=tmp_path)
    with pytest.raises(DataError, match="test_fraction"):
        token_domains(CORPUS, bpe, test_fraction=1.0, cache_dir=tmp_path)
    with pytest.raises(DataError, match=r"unknown domains \['poetry'\].*available: law, cook"):
        token_domains(CORPUS, bpe, domains=["poetry"], cache_dir=tmp_path)
    with pytest.raises(DataError, match="listed more than once"):
        token_domains(CORPUS, bpe, domains=["law", "law"], cache_dir=tmp_path)
    assert not any(tmp_path.iterdir())


def test_ids_outside_the_vocabulary_are_refused(tmp_path):
    class Liar(CountingTokenizer):
        vocab_size = 100  # but bytes reach 121 ('y')

    with pytest.raises(DataError, match="outside its vocabulary of 100"):
        token_domains(CORPUS, Liar(), block_size=16, cache_dir=tmp_path)
    with pytest.raises(DataError, match="not a Hugging Face tokenizer"):
        token_domains(CORPUS, object(), cache_dir=tmp_path)


def test_progress_reports_domains(bpe, tmp_path, capsys):
    token_domains(CORPUS, bpe, block_size=16, cache_dir=tmp_path, progress=True)
    first = capsys.readouterr().err
    assert "tokenizing law" in first and "tokenizing cook" in first
    token_domains(CORPUS, bpe, block_size=16, cache_dir=tmp_path, progress=True)
    assert "law: " in capsys.readouterr().err  # cache hits are reported with their token count


def test_real_corpus_tokenizes_fast(tmp_path):
    from lifelong.datasets import load

    try:
        corpus = load("fortunes")
    except DatasetNotFoundError:
        pytest.skip("Debian fortunes not installed")
    names = sorted(corpus.domains, key=lambda d: -sum(map(len, corpus.domains[d])))[:4]
    corpus = TextCorpus("fortunes", {d: corpus.domains[d] for d in names}, corpus.source)
    tok = train_bpe(corpus, vocab_size=500, cache_dir=tmp_path / "bpe")
    start = time.perf_counter()
    stream = token_domains(corpus, tok, block_size=128, cache_dir=tmp_path / "tokens")
    seconds = time.perf_counter() - start
    tokens = sum(stream.info["tokens"].values())
    print(f"fortunes, {len(names)} domains: {tokens} tokens, {seconds:.2f} s, {tokens / seconds:.0f} tok/s")
    assert tokens > 100_000
    assert tokens / seconds > 20_000  # ~200k-500k/s on 2 busy cores; generous for a loaded CI machine
    start = time.perf_counter()
    token_domains(corpus, tok, block_size=128, cache_dir=tmp_path / "tokens")
    assert time.perf_counter() - start < seconds  # from the cache
