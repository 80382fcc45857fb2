"""Stable ids of the samples in an experience, and the data manifest a model version records.

A sample's id is the value of the data's `id_column` where the data has one (kept by the file reader in
`experience.info["ids"]`); otherwise a content hash: the first 16 hex digits of the SHA-256 of its
features and label (shape and dtype included), so the same sample gets the same id in every run and on
every machine. Two identical rows get the same content id: deleting that id deletes both, which is what a
request to delete "this data" means.

    >>> import torch
    >>> from lifelong.streams.experience import Experience, Split
    >>> split = Split(torch.zeros(2, 3), torch.tensor([0, 1]))
    >>> e = Experience(0, split, split)
    >>> ids = sample_ids(e)
    >>> len(ids), len(ids[0]), ids[0] != ids[1]
    (2, 16, True)
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import replace
from typing import Any

import torch

from lifelong.streams.experience import Experience, Split, Stream
from lifelong.streams.fingerprint import experience_name, split_digest

CONTENT_ID_HEX = 16  # 64 bits: no collision expected below ~10^9 samples


def content_ids(split: Split) -> list[str]:
    """One content hash per row of `split` (features, label and task label)."""
    x = split.x.detach().cpu().contiguous()
    y = split.y.detach().cpu().contiguous()
    t = None if split.t is None else split.t.detach().cpu().contiguous()
    head = f"{x.dtype}{tuple(x.shape[1:])}{y.dtype}{tuple(y.shape[1:])}".encode()
    xb = x.reshape(len(x), -1).view(torch.uint8).numpy() if x.numel() else None
    yb = y.reshape(len(y), -1).view(torch.uint8).numpy() if y.numel() else None
    ids = []
    for i in range(len(x)):
        h = hashlib.sha256(head)
        if xb is not None:
            h.update(xb[i].tobytes())
        if yb is not None:
            h.update(yb[i].tobytes())
        if t is not None:
            h.update(str(int(t[i])).encode())
        ids.append(h.hexdigest()[:CONTENT_ID_HEX])
    return ids


def sample_ids(experience: Experience, split: str = "train") -> list[str]:
    """The ids of `experience`'s `split` ("train" or "test"), in row order: the data's own ids where it
    has an `id_column`, else content hashes."""
    given = (
        experience.info.get("ids", {}).get(split) if isinstance(experience.info.get("ids"), dict) else None
    )
    rows: Split = getattr(experience, split)
    if given is not None and len(given) == len(rows):
        return [str(i) for i in given]
    return content_ids(rows)


def manifest(stream: Stream | Iterable[Experience]) -> list[dict[str, Any]]:
    """Per experience: its name, the SHA-256 of its splits, and the ids of its training samples (what a
    deletion request is checked against) and of its test samples."""
    return [
        {
            "name": experience_name(e),
            "id_source": "id_column" if isinstance(e.info.get("ids"), dict) else "content",
            "train": len(e.train),
            "test": len(e.test),
            "train_sha256": split_digest(e.train),
            "test_sha256": split_digest(e.test),
            "train_ids": sample_ids(e, "train"),
            "test_ids": sample_ids(e, "test"),
        }
        for e in stream
    ]


def without_ids(experience: Experience, ids: set[str]) -> tuple[Experience, int]:
    """`experience` with the training samples whose id is in `ids` removed (labelled, and unlabeled ones),
    and how many were removed. The test split is kept (it is never trained on)."""
    train_ids = sample_ids(experience, "train")
    keep = [i for i, sid in enumerate(train_ids) if sid not in ids]
    removed = len(train_ids) - len(keep)
    info = dict(experience.info)
    unlabeled, truth = experience.unlabeled, experience.unlabeled_truth
    if unlabeled is not None:  # deleted data is not learnt from without labels either
        recorded = info.get("ids")
        given = recorded.get("unlabeled") if isinstance(recorded, dict) else None
        u_ids = (
            [str(i) for i in given]
            if given is not None and len(given) == len(unlabeled)
            else content_ids(unlabeled)
        )
        u_keep = [i for i, sid in enumerate(u_ids) if sid not in ids]
        if len(u_keep) < len(u_ids):
            removed += len(u_ids) - len(u_keep)
            u_index = torch.tensor(u_keep, dtype=torch.long)
            unlabeled = unlabeled.subset(u_index)
            truth = None if truth is None else truth[u_index]
            if given is not None:
                info["ids"] = {**info["ids"], "unlabeled": [u_ids[i] for i in u_keep]}
    if removed == 0:
        return experience, 0
    if len(keep) < len(train_ids) and isinstance(info.get("ids"), dict):
        info["ids"] = {**info["ids"], "train": [train_ids[i] for i in keep]}
    index = torch.tensor(keep, dtype=torch.long)
    return replace(experience, train=experience.train.subset(index), info=info, unlabeled=unlabeled,
                   unlabeled_truth=truth), removed  # fmt: skip
