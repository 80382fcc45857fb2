"""Experiences, streams and the scenario builders that make them."""

from lifelong.streams.experience import Experience, Split, Stream
from lifelong.streams.files import from_files
from lifelong.streams.scenarios import (
    class_incremental,
    online,
    permuted,
    rotated,
    subsample,
    task_incremental,
)
from lifelong.streams.text import text_domains
from lifelong.streams.text_files import read_text_domains

__all__ = [
    "Experience",
    "Split",
    "Stream",
    "class_incremental",
    "from_files",
    "online",
    "permuted",
    "read_text_domains",
    "rotated",
    "subsample",
    "task_incremental",
    "text_domains",
]
