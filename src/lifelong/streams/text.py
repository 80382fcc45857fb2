"""Language-modelling streams: one experience per text domain, as packed next-token blocks.

Example:
    >>> from lifelong.datasets.base import TextCorpus
    >>> corpus = TextCorpus("toy", {"law": ["The court held that " * 30], "cook": ["Whisk two eggs. " * 40]})
    >>> stream = text_domains(corpus, block_size=16)
    >>> stream.kind, stream.num_classes, [e.domain for e in stream], tuple(stream[0].train.x.shape)
    ('language_modeling', 256, ['law', 'cook'], (31, 16))
    >>> ByteTokenizer().decode(stream[0].train.x[0])
    'The court held t'
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from lifelong.datasets.base import TextCorpus
from lifelong.errors import DataError
from lifelong.streams.experience import Experience, Split, Stream


@runtime_checkable
class Tokenizer(Protocol):
    """What `text_domains` needs: `encode` and a vocabulary size (`vocab_size` or `len(tokenizer)`)."""

    def encode(self, text: str) -> list[int]: ...


class ByteTokenizer:
    """UTF-8 bytes as tokens: vocabulary 256, no files, lossless.

    Example:
        >>> tok = ByteTokenizer()
        >>> tok.encode("hé")
        [104, 195, 169]
        >>> tok.decode(tok.encode("hé"))
        'hé'
    """

    vocab_size = 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: Iterable[int] | torch.Tensor | np.ndarray) -> str:
        arr = np.asarray(ids.tolist() if isinstance(ids, torch.Tensor) else list(ids), dtype=np.int64)
        if arr.size and (arr.min() < 0 or arr.max() > 255):
            raise DataError(f"byte token ids must be in 0..255, got {arr.min()}..{arr.max()}")
        # a block may start or end inside a multi-byte character
        return arr.astype(np.uint8).tobytes().decode("utf-8", errors="replace")

    def __len__(self) -> int:
        return 256


def vocab_size(tokenizer: Any) -> int:
    """Number of token ids a tokenizer can produce: `len(tok)` if defined (Hugging Face counts added
    tokens there), else `tok.vocab_size`, else `tok.get_vocab_size()` (`tokenizers.Tokenizer`).

    Example:
        >>> vocab_size(ByteTokenizer())
        256
    """
    if hasattr(tokenizer, "__len__"):
        return int(len(tokenizer))
    if hasattr(tokenizer, "vocab_size"):
        return int(tokenizer.vocab_size)
    if hasattr(tokenizer, "get_vocab_size"):
        return int(tokenizer.get_vocab_size())
    raise DataError(
        f"tokenizer {type(tokenizer).__name__} has no vocab_size attribute or __len__; "
        "text_domains needs the vocabulary size for the output layer"
    )


def _encode(tokenizer: Any, text: str) -> np.ndarray:
    if isinstance(tokenizer, ByteTokenizer):
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int64)
    out = tokenizer.encode(text)
    out = getattr(out, "ids", out)  # `tokenizers.Tokenizer.encode` returns an Encoding
    return np.asarray(out, dtype=np.int64).reshape(-1)


def text_domains(
    corpus: TextCorpus,
    domains: list[str] | None = None,
    block_size: int = 64,
    test_fraction: float = 0.1,
    max_blocks_per_domain: int | None = None,
    tokenizer: Tokenizer | None = None,
    seed: int = 0,
    separator: str = "\n\n",
) -> Stream:
    """One language-modelling experience per domain of `corpus`, in the order of `domains`.

    Each domain's texts are joined with `separator`, tokenized (bytes by default) and cut into
    non-overlapping blocks of `block_size + 1` tokens; `x = block[:, :-1]`, `y = block[:, 1:]` (int64).
    A random `test_fraction` of each domain's blocks (at least one), drawn with `seed` and the domain name,
    is held out as its test split. `max_blocks_per_domain` keeps that many training blocks (a random,
    fixed subset) and leaves the test split as is. The tail shorter than a block is dropped.

    Example:
        >>> from lifelong.datasets.base import TextCorpus
        >>> corpus = TextCorpus("toy", {"a": ["abc " * 100], "b": ["xyz " * 100]})
        >>> s = text_domains(corpus, domains=["b", "a"], block_size=8, max_blocks_per_domain=10)
        >>> [(e.domain, len(e.train), len(e.test)) for e in s]
        [('b', 10, 4), ('a', 10, 4)]
    """
    if isinstance(block_size, bool) or not isinstance(block_size, int | np.integer) or block_size < 2:
        raise DataError(
            f"block_size must be an integer >= 2 (one input and one target token), got {block_size}"
        )
    block_size = int(block_size)
    if not 0.0 < test_fraction < 1.0:
        raise DataError(f"test_fraction must be between 0 and 1 (exclusive), got {test_fraction}")
    if max_blocks_per_domain is not None and max_blocks_per_domain < 1:
        raise DataError(f"max_blocks_per_domain must be >= 1 or None, got {max_blocks_per_domain}")
    tokenizer = ByteTokenizer() if tokenizer is None else tokenizer
    if not callable(getattr(tokenizer, "encode", None)):
        raise DataError(f"tokenizer {type(tokenizer).__name__} has no encode(str) -> list[int] method")
    vocab = vocab_size(tokenizer)

    names = select_domains(corpus, domains)
    span = block_size + 1
    experiences = []
    for i, name in enumerate(names):
        tokens = _encode(tokenizer, separator.join(corpus.domains[name]))
        if tokens.size and (tokens.min() < 0 or tokens.max() >= vocab):
            raise DataError(
                f"tokenizer produced ids {tokens.min()}..{tokens.max()} for domain {name!r}, outside its "
                f"vocabulary of {vocab}"
            )
        n = len(tokens) // span
        if n < 2:
            raise DataError(
                f"domain {name!r} has {len(tokens)} tokens; block_size={block_size} needs at least "
                f"{2 * span} for one train and one test block (lower block_size or merge domains with "
                "group_domains)"
            )
        blocks = torch.from_numpy(tokens[: n * span].reshape(n, span))
        rng = np.random.default_rng([seed, zlib.crc32(name.encode("utf-8"))])
        order = rng.permutation(n)
        n_test = min(max(round(n * test_fraction), 1), n - 1)
        test_idx = np.sort(order[:n_test])
        # the cap draws from the full training pool, so capped train is a subset of uncapped train
        train_idx = np.sort(order[n_test:][:max_blocks_per_domain])
        experiences.append(
            Experience(
                id=i,
                train=_split(blocks, train_idx),
                test=_split(blocks, test_idx),
                classes=None,
                domain=name,
                info={"tokens": int(len(tokens)), "blocks": int(n)},
            )
        )
    return Stream(
        name=f"{corpus.name}-domains",
        experiences=experiences,
        kind="language_modeling",
        num_classes=vocab,
        input_shape=(block_size,),
        info={
            "tokenizer": type(tokenizer).__name__,
            "block_size": block_size,
            "separator": separator,
            "source": corpus.source,
        },
    )


def select_domains(corpus: TextCorpus, domains: list[str] | None) -> list[str]:
    """The domains of `corpus` a stream takes, in order (all of them for None), each once and each known."""
    available = list(corpus.domains)
    names = available if domains is None else list(domains)
    if not names:
        raise DataError(f"no domains selected; available: {', '.join(available)}")
    unknown = [d for d in names if d not in corpus.domains]
    if unknown:
        raise DataError(
            f"unknown domains {unknown} in corpus {corpus.name!r}; available: {', '.join(available)}"
        )
    repeated = sorted({d for d in names if names.count(d) > 1})
    if repeated:
        raise DataError(f"domains {repeated} are listed more than once; each domain is one experience")
    return names


def _split(blocks: torch.Tensor, index: np.ndarray) -> Split:
    chosen = blocks[torch.from_numpy(index)]
    return Split(chosen[:, :-1].contiguous(), chosen[:, 1:].contiguous())


def group_domains(corpus: TextCorpus, groups: dict[str, list[str]]) -> TextCorpus:
    """Merge small domains into named groups; other domains stay as they are.

    A group takes the place of its first member in the corpus order and holds its members' texts in the
    listed order. Pass `domains=list(groups)` to `text_domains` to use only the groups.

    Example:
        >>> c = TextCorpus("f", {"art": ["a"], "food": ["f"], "love": ["l"], "work": ["w"]})
        >>> group_domains(c, {"life": ["love", "food"]}).domains
        {'art': ['a'], 'life': ['l', 'f'], 'work': ['w']}
    """
    available = list(corpus.domains)
    unknown = sorted({d for members in groups.values() for d in members if d not in corpus.domains})
    if unknown:
        raise DataError(
            f"unknown domains {unknown} in corpus {corpus.name!r}; available: {', '.join(available)}"
        )
    owner: dict[str, str] = {}
    for group, members in groups.items():
        if not members:
            raise DataError(f"group {group!r} has no domains")
        for d in members:
            if d in owner:
                raise DataError(
                    f"domain {d!r} is in both groups {owner[d]!r} and {group!r}; give it one group"
                )
            owner[d] = group
    clash = [g for g in groups if g in corpus.domains and g not in owner]
    if clash:
        raise DataError(f"group names {clash} are also names of ungrouped domains; rename the groups")
    merged: dict[str, list[str]] = {}
    for d in available:
        if d not in owner:
            merged[d] = list(corpus.domains[d])
        elif owner[d] not in merged:
            merged[owner[d]] = [text for member in groups[owner[d]] for text in corpus.domains[member]]
    return TextCorpus(name=corpus.name, domains=merged, source=corpus.source)
