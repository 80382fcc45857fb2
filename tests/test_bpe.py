"""train_bpe: byte-level BPE trained with `tokenizers`, deterministic, cached, a standard HF tokenizer."""

from __future__ import annotations

import time

import pytest

from lifelong.datasets.base import TextCorpus
from lifelong.errors import ConfigError, DataError
from lifelong.lm import bpe
from lifelong.lm.bpe import train_bpe

TEXTS = [
    "The court held that the contract was void for want of consideration.",
    "Whisk two eggs with sugar until pale, then fold in the flour.",
    "The defendant appealed; the court of appeal reversed the ruling.",
    "Bake the cake for forty minutes and let it cool before icing.",
] * 10


def test_vocabulary_eos_and_lossless_round_trip(tmp_path):
    tok = train_bpe(TEXTS, vocab_size=320, cache_dir=tmp_path)
    assert 257 < len(tok) <= 320
    assert (tok.eos_token, tok.eos_token_id) == ("<|endoftext|>", 0)
    ids = tok("The court held", add_special_tokens=False)["input_ids"]
    assert len(ids) < len("The court held")  # merges learnt: fewer tokens than bytes
    # every byte has a token: text never seen in training still round-trips exactly
    text = "Zürich ☃ naïve 🙂 \t tabs\nnew line"
    assert tok.decode(tok(text)["input_ids"]) == text


def test_same_texts_give_the_same_vocabulary(tmp_path):
    a = train_bpe(TEXTS, vocab_size=320, cache_dir=tmp_path / "a")
    b = train_bpe(TEXTS, vocab_size=320, cache_dir=tmp_path / "b")
    assert a.backend_tokenizer.to_str() == b.backend_tokenizer.to_str()
    assert a.get_vocab() == b.get_vocab()


def test_second_call_loads_from_cache_without_training(tmp_path, monkeypatch):
    first = train_bpe(TEXTS, vocab_size=320, cache_dir=tmp_path)
    assert [p.name for p in tmp_path.rglob("*") if p.is_file()] == ["tokenizer.json"]

    def no_training(*args, **kwargs):
        raise AssertionError("trained again although the tokenizer is cached")

    monkeypatch.setattr(bpe, "_train", no_training)
    start = time.perf_counter()
    second = train_bpe(TEXTS, vocab_size=320, cache_dir=tmp_path)
    assert time.perf_counter() - start < 2.0  # tens of milliseconds; generous for a loaded machine
    assert second.get_vocab() == first.get_vocab()
    # a TextCorpus trains on its documents in order: the same texts, the same cache entry
    corpus = TextCorpus("toy", {"law": TEXTS[:20], "cook": TEXTS[20:]})
    assert train_bpe(corpus, vocab_size=320, cache_dir=tmp_path).get_vocab() == first.get_vocab()


def test_cache_is_keyed_by_texts_and_options(tmp_path, monkeypatch):
    calls = []
    real = bpe._train
    monkeypatch.setattr(bpe, "_train", lambda *a: calls.append(a[1:]) or real(*a))
    train_bpe(TEXTS, vocab_size=320, cache_dir=tmp_path)
    train_bpe(TEXTS[:-1] + [TEXTS[-1] + "!"], vocab_size=320, cache_dir=tmp_path)  # one character more
    train_bpe(TEXTS, vocab_size=300, cache_dir=tmp_path)
    train_bpe(TEXTS, vocab_size=320, cache_dir=tmp_path, min_frequency=3)
    # length-prefixed hashing: the same characters split differently are other texts
    train_bpe(["ab", "c"], vocab_size=300, cache_dir=tmp_path)
    train_bpe(["a", "bc"], vocab_size=300, cache_dir=tmp_path)
    train_bpe(TEXTS, vocab_size=320, cache_dir=tmp_path)  # cached
    assert calls == [(320, 2), (320, 2), (300, 2), (320, 3), (300, 2), (300, 2)]
    assert len(list(tmp_path.rglob("tokenizer.json"))) == 6


def test_damaged_cache_is_retrained(tmp_path):
    first = train_bpe(TEXTS, vocab_size=320, cache_dir=tmp_path)
    (path,) = tmp_path.rglob("tokenizer.json")
    path.write_text('{"model": ')
    with pytest.warns(UserWarning, match="damaged"):
        again = train_bpe(TEXTS, vocab_size=320, cache_dir=tmp_path)
    assert again.get_vocab() == first.get_vocab()
    assert path.read_text() == first.backend_tokenizer.to_str()


def test_save_pretrained_gives_a_standard_tokenizer_folder(tmp_path):
    from transformers import AutoTokenizer

    tok = train_bpe(TEXTS, vocab_size=320, cache_dir=tmp_path / "cache")
    tok.save_pretrained(tmp_path / "saved")
    loaded = AutoTokenizer.from_pretrained(tmp_path / "saved")
    assert loaded.eos_token_id == 0 and len(loaded) == len(tok)
    assert loaded(TEXTS[0])["input_ids"] == tok(TEXTS[0])["input_ids"]


@pytest.mark.parametrize("vocab_size", [256, 0, 300.0, True, "4096", None])
def test_bad_vocab_size_is_a_config_error_and_writes_nothing(tmp_path, vocab_size):
    with pytest.raises(ConfigError, match="vocab_size must be an integer >= 257"):
        train_bpe(TEXTS, vocab_size=vocab_size, cache_dir=tmp_path)
    assert not tmp_path.exists() or not any(tmp_path.iterdir())


def test_bad_min_frequency_and_bad_texts(tmp_path):
    with pytest.raises(ConfigError, match="min_frequency"):
        train_bpe(TEXTS, vocab_size=300, cache_dir=tmp_path, min_frequency=0)
    with pytest.raises(DataError, match="one string"):
        train_bpe("a whole book as one string", vocab_size=300, cache_dir=tmp_path)
    with pytest.raises(DataError, match="no text"):
        train_bpe(["", ""], vocab_size=300, cache_dir=tmp_path)
    with pytest.raises(DataError, match="must be strings, found a bytes"):
        train_bpe(["fine", b"bytes"], vocab_size=300, cache_dir=tmp_path)
    assert not any(tmp_path.iterdir())
