"""Language-modelling streams for real tokenizers: tokenize each domain once (batched, cached on disk), pack
it into next-token blocks, hold out test blocks and apply token budgets.

The tokenized sequence of a domain (its documents joined by the tokenizer's end-of-text token) is stored as
an `.npy` file keyed by a hash of the tokenizer and a hash of the documents, so a second run with the same
tokenizer and text loads it (memory-mapped) instead of tokenizing again.

Example:
    >>> import tempfile
    >>> from lifelong.datasets.base import TextCorpus
    >>> from lifelong.streams.text import ByteTokenizer
    >>> corpus = TextCorpus("toy", {"law": ["The court held that " * 30], "cook": ["Whisk two eggs. " * 40]})
    >>> stream = token_domains(corpus, ByteTokenizer(), block_size=16, cache_dir=tempfile.mkdtemp())
    >>> stream.kind, stream.num_classes, [e.domain for e in stream], tuple(stream[0].train.x.shape)
    ('language_modeling', 256, ['law', 'cook'], (31, 16))
    >>> stream[1].info["tokens"], stream[1].info["test_tokens"]
    (640, 64)
"""

from __future__ import annotations

import hashlib
import io
import json
import warnings
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lifelong.atomic import atomic_write_bytes, atomic_write_json
from lifelong.datasets.base import TextCorpus, user_cache_dir
from lifelong.errors import DataError
from lifelong.streams.experience import Experience, Split, Stream
from lifelong.streams.text import ByteTokenizer, select_domains, vocab_size

#: Bump when the layout of a cached token sequence changes: old entries are then simply not found.
CACHE_FORMAT = 1
#: Joins documents when the tokenizer has no end-of-text token (the byte tokenizer, some HF tokenizers).
SEPARATOR = "\n\n"
#: End-of-text tokens looked up in a `tokenizers.Tokenizer` vocabulary, in this order.
EOS_TOKENS = ("<|endoftext|>", "</s>", "<eos>")
#: Documents per batched tokenizer call: large enough for the Rust side to parallelise, small enough for
#: the progress bar to move.
CHUNK = 1000


def token_domains(
    corpus: TextCorpus,
    tokenizer: Any,
    *,
    domains: list[str] | None = None,
    block_size: int = 256,
    max_tokens: int | None = None,
    max_test_tokens: int | None = None,
    test_fraction: float = 0.1,
    seed: int = 0,
    cache_dir: str | Path | None = None,
    progress: bool = False,
) -> Stream:
    """One language-modelling experience per domain of `corpus` (in the order of `domains`), as packed
    blocks of a real tokenizer.

    `tokenizer`: a Hugging Face fast tokenizer, a `tokenizers.Tokenizer`, `ByteTokenizer`, or any object
    with `encode(str) -> list[int]` (the last is not cached: nothing identifies its vocabulary).
    Each domain's documents are tokenized in batches and joined by the tokenizer's end-of-text token
    (`eos_token_id`, or `<|endoftext|>` / `</s>` in a `tokenizers.Tokenizer`; without one, by the tokens
    of "\\n\\n"), then cut into non-overlapping spans of `block_size + 1` tokens: `x = span[:-1]`,
    `y = span[1:]` (int64). The tail shorter than a span is dropped.

    Per domain, a random `test_fraction` of the blocks (at least one), drawn with `seed` and the domain
    name, is held out as the test split. `max_test_tokens` then keeps `max_test_tokens // block_size` of
    those test blocks and `max_tokens` keeps `max_tokens // block_size` training blocks (both a fixed,
    seeded subset; a larger budget keeps everything a smaller one kept).

    The token sequence of each domain is cached in `cache_dir` (default `~/.cache/lifelong/tokens`).

    Example:
        >>> import tempfile
        >>> from lifelong.datasets.base import TextCorpus
        >>> from lifelong.streams.text import ByteTokenizer
        >>> c = TextCorpus("toy", {"a": ["abc " * 100], "b": ["xyz " * 100]})
        >>> s = token_domains(c, ByteTokenizer(), domains=["b", "a"], block_size=8, max_tokens=80,
        ...                   cache_dir=tempfile.mkdtemp())
        >>> [(e.domain, len(e.train), len(e.test)) for e in s]
        [('b', 10, 4), ('a', 10, 4)]
    """
    block_size = _check_options(block_size, max_tokens, max_test_tokens, test_fraction)
    names = select_domains(corpus, domains)
    kind = _kind(tokenizer)
    vocab = vocab_size(tokenizer)
    eos = _eos_id(tokenizer, kind)
    separator = np.asarray([eos], dtype=np.int64) if eos is not None else _encode_one(tokenizer, kind)
    key = _tokenizer_key(tokenizer, kind, eos)
    folder = Path(cache_dir) if cache_dir is not None else user_cache_dir("tokens")

    # Tokenize (or load) every domain and check them all before writing any cache entry: a bad input
    # fails whole and leaves the cache as it was.
    sequences: dict[str, np.ndarray] = {}
    fresh: dict[str, tuple[Path, np.ndarray]] = {}
    with _Reporter(progress, names, corpus) as report:
        for name in names:
            docs = corpus.domains[name]
            path = None if key is None else folder / key[:16] / f"{_documents_hash(docs)[:32]}.npy"
            cached = None if path is None else _load_cached(path)
            if cached is not None:
                sequences[name] = cached
                report.cached(name, len(cached))
                continue
            tokens = _tokenize(tokenizer, kind, docs, separator, report.advancer(name))
            sequences[name] = tokens
            if path is not None:
                fresh[name] = (path, tokens)
    for name, tokens in sequences.items():
        if tokens.size and (int(tokens.min()) < 0 or int(tokens.max()) >= vocab):
            raise DataError(
                f"tokenizer produced ids {int(tokens.min())}..{int(tokens.max())} for domain {name!r}, "
                f"outside its vocabulary of {vocab}; use the tokenizer that belongs to the model (for a "
                "Hugging Face tokenizer with added tokens, len(tokenizer) must cover them)"
            )
    span = block_size + 1
    short = {name: len(t) for name, t in sequences.items() if len(t) // span < 2}
    if short:
        listed = ", ".join(f"{name!r} ({count} tokens)" for name, count in short.items())
        these = "domain " + listed + " is" if len(short) == 1 else "domains " + listed + " are"
        raise DataError(
            f"{these} too short for block_size={block_size}: each domain needs at least "
            f"{2 * span} tokens for one training and one test block of {span}; lower block_size, merge "
            "small domains with lifelong.streams.text.group_domains, or leave these domains out"
        )
    for path, tokens in fresh.values():
        _store(path, tokens, vocab)

    train_cap = None if max_tokens is None else max_tokens // block_size
    test_cap = None if max_test_tokens is None else max_test_tokens // block_size
    experiences = []
    for i, name in enumerate(names):
        n = len(sequences[name]) // span
        train_idx, test_idx = _draw_blocks(n, name, seed, test_fraction, train_cap, test_cap)
        blocks = sequences[name][: n * span].reshape(n, span)  # a view: a cached sequence stays on disk
        experiences.append(
            Experience(
                id=i,
                train=_split(blocks, train_idx),
                test=_split(blocks, test_idx),
                domain=name,
                info={
                    "tokens": int(len(sequences[name])),
                    "train_tokens": int(len(train_idx) * block_size),
                    "test_tokens": int(len(test_idx) * block_size),
                    "documents": len(corpus.domains[name]),
                    "blocks": int(n),
                },
            )
        )
    return Stream(
        name=f"{corpus.name}-domains",
        experiences=experiences,
        kind="language_modeling",
        num_classes=vocab,
        input_shape=(block_size,),
        info={
            "tokenizer": _tokenizer_name(tokenizer, kind),
            "tokenizer_hash": key,
            "block_size": block_size,
            "eos_id": eos,
            "separator": None if eos is not None else SEPARATOR,
            "tokens": {name: int(len(sequences[name])) for name in names},
            "max_tokens": max_tokens,
            "max_test_tokens": max_test_tokens,
            "source": corpus.source,
        },
    )


# ---------------------------------------------------------------------------------------------- options


def _check_options(block_size: Any, max_tokens: Any, max_test_tokens: Any, test_fraction: Any) -> int:
    if isinstance(block_size, bool) or not isinstance(block_size, int | np.integer) or block_size < 2:
        raise DataError(
            f"block_size must be an integer >= 2 (one input and one target token), got {block_size!r}"
        )
    block_size = int(block_size)
    if (
        isinstance(test_fraction, bool)
        or not isinstance(test_fraction, int | float)
        or not (0.0 < test_fraction < 1.0)
    ):
        raise DataError(f"test_fraction must be a number between 0 and 1 (exclusive), got {test_fraction!r}")
    for label, budget in (("max_tokens", max_tokens), ("max_test_tokens", max_test_tokens)):
        if budget is None:
            continue
        if isinstance(budget, bool) or not isinstance(budget, int | np.integer):
            raise DataError(f"{label} must be a whole number of tokens or None, got {budget!r}")
        if budget < block_size:
            split = "training" if label == "max_tokens" else "test"
            raise DataError(
                f"{label}={budget} is below one block of block_size={block_size} tokens, so no domain "
                f"would keep a {split} block; raise {label} to at least {block_size} or lower block_size"
            )
    return block_size


# -------------------------------------------------------------------------------------------- tokenizers


def _kind(tokenizer: Any) -> str:
    """ "byte", "hf" (a transformers tokenizer), "tokenizers" (a `tokenizers.Tokenizer`) or "encode"."""
    if isinstance(tokenizer, ByteTokenizer):
        return "byte"
    # look at the class and its bases (a user's subclass lives elsewhere) before importing transformers
    modules = {cls.__module__.split(".")[0] for cls in type(tokenizer).__mro__}
    if "transformers" in modules:
        from transformers import PreTrainedTokenizerBase

        if isinstance(tokenizer, PreTrainedTokenizerBase):
            return "hf"
    if "tokenizers" in modules and hasattr(tokenizer, "encode_batch_fast"):
        return "tokenizers"
    if callable(getattr(tokenizer, "encode", None)):
        return "encode"
    raise DataError(
        f"tokenizer {type(tokenizer).__name__} is not a Hugging Face tokenizer, a tokenizers.Tokenizer or "
        "an object with encode(str) -> list[int]; pass one of these (e.g. AutoTokenizer.from_pretrained)"
    )


def _eos_id(tokenizer: Any, kind: str) -> int | None:
    if kind == "hf":
        value = tokenizer.eos_token_id
        return None if value is None else int(value)
    if kind == "tokenizers":
        for token in EOS_TOKENS:
            found = tokenizer.token_to_id(token)
            if found is not None:
                return int(found)
    return None


def _tokenizer_key(tokenizer: Any, kind: str, eos: int | None) -> str | None:
    """A hash that changes whenever the tokenizer would produce other ids; None when no such hash exists
    (then the domain is tokenized every time rather than risk reading tokens of another tokenizer)."""
    if kind == "byte":
        text = "bytes"
    elif kind == "hf" and getattr(tokenizer, "backend_tokenizer", None) is not None:
        text = f"{type(tokenizer).__name__}\n{tokenizer.backend_tokenizer.to_str()}"
    elif kind == "tokenizers":
        text = tokenizer.to_str()
    else:
        return None
    return hashlib.sha256(f"v{CACHE_FORMAT}\neos={eos}\n{text}".encode()).hexdigest()


def _tokenizer_name(tokenizer: Any, kind: str) -> str:
    if kind == "hf":
        return str(getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__)
    return "tokenizers.Tokenizer" if kind == "tokenizers" else type(tokenizer).__name__


def _batch_encoder(tokenizer: Any, kind: str) -> Callable[[list[str]], list[list[int]]]:
    """A function from a list of documents to their token ids, without special tokens (BOS would land in
    the middle of packed blocks)."""
    if kind == "hf":
        return lambda docs: tokenizer(
            docs, add_special_tokens=False, return_attention_mask=False, verbose=False
        )["input_ids"]
    if kind == "tokenizers":
        return lambda docs: [e.ids for e in tokenizer.encode_batch_fast(docs, add_special_tokens=False)]

    def one_by_one(docs: list[str]) -> list[list[int]]:
        return [list(getattr(out, "ids", out)) for out in map(tokenizer.encode, docs)]

    return one_by_one


def _encode_one(tokenizer: Any, kind: str) -> np.ndarray:
    if kind == "byte":
        return np.frombuffer(SEPARATOR.encode(), dtype=np.uint8).astype(np.int64)
    return np.asarray(_batch_encoder(tokenizer, kind)([SEPARATOR])[0], dtype=np.int64)


def _tokenize(
    tokenizer: Any, kind: str, docs: Sequence[str], separator: np.ndarray, advance: Callable[[int], None]
) -> np.ndarray:
    """The documents' tokens joined by `separator` (between documents, not after the last), as int64."""
    if kind == "byte":
        joined = SEPARATOR.join(docs)
        advance(len(docs))
        return np.frombuffer(joined.encode("utf-8"), dtype=np.uint8).astype(np.int64)
    encode = _batch_encoder(tokenizer, kind)
    sep = separator.tolist()
    parts = []
    for start in range(0, len(docs), CHUNK):
        flat: list[int] = []  # one chunk of Python ints at a time: a whole domain as a list is ~40 B a token
        for i, ids in enumerate(encode(list(docs[start : start + CHUNK]))):
            if start or i:
                flat.extend(sep)
            flat.extend(ids)
        parts.append(np.asarray(flat, dtype=np.int64))
        advance(min(CHUNK, len(docs) - start))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


# ------------------------------------------------------------------------------------------------ cache


def _documents_hash(docs: Sequence[str]) -> str:
    """SHA-256 over the documents, each prefixed by its length, so ["ab", "c"] and ["a", "bc"] differ."""
    h = hashlib.sha256()
    for doc in docs:
        data = doc.encode("utf-8", errors="surrogatepass")
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()


def _checksum(tokens: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(tokens).data).hexdigest()


def _load_cached(path: Path) -> np.ndarray | None:
    """The cached token sequence at `path` (memory-mapped), or None when absent or damaged (then it is
    tokenized again and rewritten; a damaged entry is reported, never trusted)."""
    meta_path = path.with_suffix(".json")
    if not path.exists() and not meta_path.exists():
        return None
    try:
        meta = json.loads(meta_path.read_text())
        tokens = np.load(path, mmap_mode="r", allow_pickle=False)
        problem = None
        if tokens.ndim != 1 or str(tokens.dtype) != meta["dtype"]:
            problem = f"holds a {tokens.dtype} array of shape {tokens.shape}, expected 1-D {meta['dtype']}"
        elif len(tokens) != meta["tokens"]:
            problem = f"holds {len(tokens)} tokens, its sidecar says {meta['tokens']}"
        elif _checksum(tokens) != meta["sha256"]:
            problem = "does not match the checksum in its sidecar"
    except (OSError, ValueError, KeyError, TypeError, EOFError) as e:
        problem = f"cannot be read ({type(e).__name__}: {e})"
    if problem is not None:
        warnings.warn(f"token cache {path} {problem}; tokenizing again and rewriting it", stacklevel=3)
        return None
    return tokens


def _store(path: Path, tokens: np.ndarray, vocab: int) -> None:
    """Write the sequence (uint16 when every id fits, else int32: half or a quarter of int64) and then its
    sidecar, both atomically; the sidecar last, so an entry without one is never read as complete."""
    small = tokens.astype(np.uint16 if vocab <= 1 << 16 else np.int32)
    buffer = io.BytesIO()
    np.save(buffer, small, allow_pickle=False)
    try:
        atomic_write_bytes(path, buffer.getvalue())
        atomic_write_json(
            path.with_suffix(".json"),
            {
                "format": CACHE_FORMAT,
                "tokens": len(small),
                "dtype": str(small.dtype),
                "sha256": _checksum(small),
            },
        )
    except OSError as e:
        # the cache only saves time: a read-only or full disk must not stop the run
        warnings.warn(f"could not write token cache {path} ({e}); the next run tokenizes again", stacklevel=3)


# -------------------------------------------------------------------------------------------- packing


def _draw_blocks(
    n: int,
    name: str,
    seed: int,
    test_fraction: float,
    train_cap: int | None,
    test_cap: int | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the training and test blocks among the `n` blocks of a domain, each sorted (text order);
    `train_cap` / `test_cap` blocks at most.

    Both budgets keep the first blocks of one seeded permutation rather than a prefix of the text: the test
    blocks come from the whole domain, and a training prefix (the first chapters of a book) would then be
    scored on text it never resembled, mixing shift within a domain into the forgetting we measure.
    Taking a prefix of the permutation keeps budgets nested: a larger budget keeps what a smaller one kept.
    """
    rng = np.random.default_rng([seed, zlib.crc32(name.encode("utf-8"))])
    order = rng.permutation(n)
    n_test = min(max(round(n * test_fraction), 1), n - 1)
    test = order[:n_test]
    train = order[n_test:]
    return np.sort(train[:train_cap]), np.sort(test[:test_cap])  # [:None] keeps all


def _split(blocks: np.ndarray, index: np.ndarray) -> Split:
    chosen = torch.from_numpy(blocks[index].astype(np.int64))  # fancy indexing copies off the memory map
    return Split(chosen[:, :-1].contiguous(), chosen[:, 1:].contiguous())


# ------------------------------------------------------------------------------------------- progress


class _Reporter:
    """A rich progress bar per domain (documents tokenized), or nothing when `enabled` is False."""

    def __init__(self, enabled: bool, names: list[str], corpus: TextCorpus) -> None:
        self.enabled = enabled
        self.names = names
        self.corpus = corpus
        self._progress: Any = None

    def __enter__(self) -> _Reporter:
        if self.enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._progress = Progress(
                TextColumn("tokenizing {task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("documents"),
                TimeElapsedColumn(),
                console=Console(stderr=True),
            )
            self._progress.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)

    def cached(self, name: str, tokens: int) -> None:
        if self._progress is not None:
            self._progress.console.print(f"  {name}: {tokens} tokens (from the token cache)")

    def advancer(self, name: str) -> Callable[[int], None]:
        if self._progress is None:
            return lambda done: None
        task = self._progress.add_task(name, total=len(self.corpus.domains[name]))
        return lambda done: self._progress.advance(task, done)
