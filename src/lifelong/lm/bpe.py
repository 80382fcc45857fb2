"""A byte-level BPE tokenizer trained on your own text (GPT-2 style), cached on disk.

For models trained from scratch on the corpora of a stream: a vocabulary of a few thousand tokens fitted
to the text makes sequences 3-4 times shorter than bytes, so a block of 256 tokens sees a paragraph instead
of a sentence.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lifelong.atomic import atomic_write_bytes
from lifelong.datasets.base import TextCorpus, user_cache_dir
from lifelong.errors import ConfigError, DataError

if TYPE_CHECKING:  # annotations only: importing transformers takes seconds
    from transformers import PreTrainedTokenizerFast

#: The end-of-text token, id 0 of every tokenizer trained here (as in GPT-2 it separates documents).
EOS_TOKEN = "<|endoftext|>"
SPECIAL_TOKENS = (EOS_TOKEN,)
#: Every byte has a token of its own, so any text encodes without an unknown token.
BYTES = 256
#: Bump when the training recipe changes: old cached tokenizers are then simply not found.
RECIPE = 1


def train_bpe(
    texts: Iterable[str] | TextCorpus,
    vocab_size: int = 4096,
    *,
    cache_dir: str | Path | None = None,
    min_frequency: int = 2,
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer (the `tokenizers` library: ByteLevel pre-tokenizer and decoder,
    BpeTrainer) with `<|endoftext|>` as its end-of-text token, and return it as a Hugging Face fast
    tokenizer (`save_pretrained` writes a standard tokenizer folder; `eos_token_id` is 0).

    `texts`: documents, or a `TextCorpus` (all documents of all its domains, in order). Train it on the
    stream's training text: the documents of the domains the model will learn. Leave out text used only
    for evaluation elsewhere (a tokenizer fitted to it compresses it unusually well, which lowers its
    perplexity per token). The held-out blocks of `token_domains` are drawn after tokenizing, so they come
    from the same documents; that is the usual practice (the tokenizer is fixed and shared by every method
    compared, so comparisons stay fair), but perplexities are then not comparable with another tokenizer's.

    The result is deterministic (same texts and options, same vocabulary) and cached as `tokenizer.json`
    in `cache_dir` (default `~/.cache/lifelong/tokenizers`) under a hash of the texts and options, so a
    second call loads it in milliseconds. The vocabulary may come out smaller than `vocab_size` when the
    text has fewer pairs seen `min_frequency` times.

    Example:
        >>> import tempfile
        >>> tok = train_bpe(["the cat sat on the mat"] * 20, vocab_size=300, cache_dir=tempfile.mkdtemp())
        >>> tok.decode(tok("the cat")["input_ids"]), tok.eos_token, tok.eos_token_id
        ('the cat', '<|endoftext|>', 0)
    """
    minimum = BYTES + len(SPECIAL_TOKENS)
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < minimum:
        raise ConfigError(
            f"vocab_size must be an integer >= {minimum} (256 byte tokens + {len(SPECIAL_TOKENS)} special), "
            f"got {vocab_size!r}; use e.g. vocab_size=4096 (small corpora) to 32000"
        )
    if isinstance(min_frequency, bool) or not isinstance(min_frequency, int) or min_frequency < 1:
        raise ConfigError(
            f"min_frequency must be an integer >= 1 (merge pairs seen at least that often), got "
            f"{min_frequency!r}; the default is 2"
        )
    if isinstance(texts, str):
        raise DataError("texts is one string; pass a list of documents (e.g. [text]) or a TextCorpus")
    docs = (
        [doc for domain in texts.domains.values() for doc in domain]
        if isinstance(texts, TextCorpus)
        else list(texts)
    )
    bad = next((type(d).__name__ for d in docs if not isinstance(d, str)), None)
    if bad is not None:
        raise DataError(f"texts must be strings, found a {bad}; decode bytes or convert values with str()")
    if not any(docs):
        raise DataError("no text to train a tokenizer on (no documents, or only empty ones); pass documents")

    options = {
        "recipe": RECIPE,
        "vocab_size": vocab_size,
        "min_frequency": min_frequency,
        "special_tokens": list(SPECIAL_TOKENS),
    }
    h = hashlib.sha256(json.dumps(options, sort_keys=True).encode())
    for doc in docs:  # length prefixes: ["ab", "c"] and ["a", "bc"] are different training sets
        data = doc.encode("utf-8", errors="surrogatepass")
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    key = h.hexdigest()
    folder = (Path(cache_dir) if cache_dir is not None else user_cache_dir("tokenizers")) / key[:32]
    path = folder / "tokenizer.json"

    from tokenizers import Tokenizer

    backend = None
    if path.exists():
        try:
            backend = Tokenizer.from_file(str(path))
        except Exception as e:  # the Rust side raises a bare Exception for any malformed file
            warnings.warn(f"cached tokenizer {path} is damaged ({e}); training it again", stacklevel=2)
    if backend is None:
        backend = _train(docs, vocab_size, min_frequency)
        try:
            atomic_write_bytes(path, backend.to_str().encode())
        except OSError as e:  # the cache only saves time
            warnings.warn(
                f"could not cache the tokenizer at {path} ({e}); it is trained again next time", stacklevel=2
            )
    return _wrap(backend, str(folder))


def _train(docs: list[str], vocab_size: int, min_frequency: int) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)  # as GPT-2: offsets keep the spaces
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(docs, trainer=trainer, length=len(docs))
    return tok


def _wrap(backend: Any, name: str) -> PreTrainedTokenizerFast:
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token=EOS_TOKEN, name_or_path=name)
