"""Experiences, streams and the scenario builders that make them."""

from lifelong.streams.experience import Experience, Split, Stream
from lifelong.streams.scenarios import (
    class_incremental,
    online,
    permuted,
    rotated,
    subsample,
    task_incremental,
)


def from_files(*args, **kwargs):  # noqa: D103 - re-export; imported lazily because it pulls pandas
    from lifelong.streams.files import from_files as _from_files

    return _from_files(*args, **kwargs)


def text_domains(*args, **kwargs):  # noqa: D103 - re-export
    from lifelong.streams.text import text_domains as _text_domains

    return _text_domains(*args, **kwargs)


__all__ = [
    "Experience",
    "Split",
    "Stream",
    "class_incremental",
    "from_files",
    "online",
    "permuted",
    "rotated",
    "subsample",
    "task_incremental",
    "text_domains",
]
