"""Replay memory as preallocated tensors (never lists of Python objects).

Three policies:
- `reservoir` (Vitter's algorithm R, vectorized per batch): after `n` samples were offered, each of them is
  in memory with probability `capacity / n`. It updates online, as samples arrive.
- `greedy_balanced` (GDumb's sampler, Prabhu et al. 2020): samples are offered one by one, in order; one is
  stored while there is room, and once the memory is full it replaces a random sample of the largest class
  (the smallest label among ties) if its own class holds fewer than that. Decisions depend only on the
  labels, so they are made on integers and the tensors are written once per call.
- `class_balanced`: at the end of each experience the slots are re-shared equally among all classes seen so
  far (counts differ by at most one, unless a class has too few samples); old classes keep a random subset
  of their slots, new classes fill theirs with a random subset of the experience's samples, and a class
  that comes back (domain-incremental streams) mixes old and new in proportion to the samples each stands
  for.

Besides `x`, `y` and `t`, a memory can keep extra per-sample tensors given to `add` (e.g. DER's logits,
`add(batch, logits=out)`); they follow their sample through every policy but `class_balanced`.

The memory is part of the run's state: `state_dict()` holds the buffers and the random generator.
"""

from __future__ import annotations

from typing import Any

import torch

from lifelong.errors import ConfigError
from lifelong.streams.experience import Split

POLICIES = ("reservoir", "class_balanced", "greedy_balanced")


class ReplayMemory:
    def __init__(self, capacity: int, policy: str = "reservoir", seed: int = 0) -> None:
        if capacity < 1:
            raise ConfigError(f"replay memory capacity must be at least 1, got {capacity}")
        if policy not in POLICIES:
            raise ConfigError(f"unknown memory policy {policy!r}; choose one of {', '.join(POLICIES)}")
        self.capacity = capacity
        self.policy = policy
        self.size = 0  # filled slots: always the first `size`
        self.seen = 0  # samples offered so far (reservoir)
        self.x: torch.Tensor | None = None
        self.y: torch.Tensor | None = None
        self.t: torch.Tensor | None = None  # task labels, -1 where none
        self.class_seen: dict[int, int] = {}  # class -> samples of it offered so far (class-balanced)
        self.extra: dict[str, torch.Tensor] = {}  # name -> [capacity, ...] per-sample tensors (e.g. logits)
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return self.size

    def _allocate(self, like: Split) -> None:
        if self.x is None:
            m = self.capacity
            self.x = torch.zeros((m, *like.x.shape[1:]), dtype=like.x.dtype)
            self.y = torch.zeros((m, *like.y.shape[1:]), dtype=like.y.dtype)
            self.t = torch.full((m,), -1, dtype=torch.long)

    def _allocate_extra(self, extra: dict[str, torch.Tensor], n: int) -> None:
        for name, value in extra.items():
            if value.shape[0] != n:
                raise ConfigError(f"extra tensor {name!r} has {value.shape[0]} rows but the batch has {n}")
            if name not in self.extra:
                if self.seen:
                    raise ConfigError(f"extra tensor {name!r} must be given from the first add() on")
                self.extra[name] = torch.zeros((self.capacity, *value.shape[1:]), dtype=value.dtype)
        if self.extra and set(extra) != set(self.extra):
            raise ConfigError(
                f"this memory stores the extra tensors {sorted(self.extra)}; add() was given {sorted(extra)}"
            )

    def _write(
        self,
        slots: torch.Tensor,
        data: Split,
        rows: torch.Tensor,
        extra: dict[str, torch.Tensor] | None = None,
    ) -> None:
        assert self.x is not None and self.y is not None and self.t is not None
        self.x[slots] = data.x[rows]
        self.y[slots] = data.y[rows]
        if data.t is not None:
            self.t[slots] = data.t[rows]
        for name, value in (extra or {}).items():
            self.extra[name][slots] = value[rows].to(self.extra[name].device, self.extra[name].dtype)

    def add(self, batch: Split, **extra: torch.Tensor) -> None:
        """Offer each sample of `batch` once (reservoir or greedy-balanced policy), with optional extra
        per-sample tensors aligned with its rows (e.g. `logits=out`)."""
        self._allocate(batch)
        self._allocate_extra(extra, len(batch))
        if self.policy == "greedy_balanced":
            self._add_greedy(batch, extra)
            return
        b = len(batch)
        position = torch.arange(self.seen, self.seen + b)
        # algorithm R: sample number n (0-based) replaces slot j ~ U{0..n} if j < capacity
        draw = torch.rand(b, generator=self.generator, dtype=torch.float64)
        candidate = (draw * (position + 1).to(torch.float64)).long()
        # free slots are filled first: at the start (then the same as position < capacity), or the holes
        # left by remove()
        free = self.capacity - self.size
        slots = torch.where(torch.arange(b) < free, torch.arange(self.size, self.size + b), candidate)
        accepted = slots < self.capacity
        slots, rows = slots[accepted], torch.nonzero(accepted).squeeze(1)
        if slots.numel() > 1:
            # two samples of one batch may pick the same slot: the later one wins, as in a sequential loop
            order = torch.argsort(slots * b + rows)
            slots, rows = slots[order], rows[order]
            last = torch.ones_like(slots, dtype=torch.bool)
            last[:-1] = slots[1:] != slots[:-1]
            slots, rows = slots[last], rows[last]
        self._write(slots, batch, rows, extra)
        self.seen += b
        self.size = min(self.capacity, self.size + b)

    def _add_greedy(self, data: Split, extra: dict[str, torch.Tensor]) -> None:
        """GDumb's greedy class-balanced sampler over the samples of `data`, in order."""
        assert self.y is not None
        if data.y.ndim != 1:
            raise ConfigError("greedy class-balanced memory needs one class label per sample")
        # each decision depends on the counts the previous ones left: a loop, but over integers only
        labels = data.y.tolist()
        draws = torch.rand(len(labels), generator=self.generator, dtype=torch.float64).tolist()
        slots_of: dict[int, list[int]] = {}
        for slot, c in enumerate(self.y[: self.size].tolist()):
            slots_of.setdefault(c, []).append(slot)
        counts = {c: len(s) for c, s in slots_of.items()}
        top = max(counts.values(), default=0)
        size = self.size
        source: dict[int, int] = {}  # slot -> row of `data` that ends there (a later write wins)
        for row, c in enumerate(labels):
            if size < self.capacity:
                slot = size
                size += 1
            elif counts.get(c, 0) < top:
                victim = min(k for k, n in counts.items() if n == top)
                victims = slots_of[victim]
                j = int(draws[row] * len(victims))
                slot = victims[j]
                victims[j] = victims[-1]  # swap-remove: O(1)
                victims.pop()
                counts[victim] -= 1
            else:
                continue
            slots_of.setdefault(c, []).append(slot)
            counts[c] = counts.get(c, 0) + 1
            top = max(counts.values())  # only after an acceptance can the largest count change
            source[slot] = row
        if source:
            slots = torch.tensor(list(source), dtype=torch.long)
            rows = torch.tensor(list(source.values()), dtype=torch.long)
            self._write(slots, data, rows, extra)
            if data.t is None:
                assert self.t is not None
                self.t[slots] = -1
        self.size = size
        self.seen += len(labels)

    def rebalance(self, data: Split) -> None:
        """Share the slots equally among the classes in memory and in `data` (class-balanced policy)."""
        self._allocate(data)
        assert self.y is not None and self.x is not None and self.t is not None
        if self.extra:
            raise ConfigError("a class-balanced memory cannot carry extra per-sample tensors (e.g. logits)")
        if data.y.ndim != 1:
            raise ConfigError(
                "class-balanced memory needs one class label per sample; use policy 'reservoir'"
            )
        old_y = self.y[: self.size]
        classes = torch.unique(torch.cat([old_y, data.y])).tolist()
        n_old = {c: int((old_y == c).sum()) for c in classes}
        n_new = {c: int((data.y == c).sum()) for c in classes}
        quota = _balanced_quota({c: n_old[c] + n_new[c] for c in classes}, self.capacity)

        keep_old, take_new = [], []
        for c in classes:
            # a class seen before and again now (domain-incremental streams) shares its quota in proportion
            # to how many samples each side stands for, so its slots stay a uniform sample of all it has seen
            seen_before = self.class_seen.get(c, n_old[c])
            k_new = min(n_new[c], round(quota[c] * n_new[c] / max(1, seen_before + n_new[c])))
            k_old = min(n_old[c], quota[c] - k_new)
            k_new = min(n_new[c], quota[c] - k_old)
            if k_new:
                rows = torch.nonzero(data.y == c).squeeze(1)
                take_new.append(rows[torch.randperm(rows.numel(), generator=self.generator)[:k_new]])
            if k_old:
                slots = torch.nonzero(old_y == c).squeeze(1)
                keep_old.append(slots[torch.randperm(slots.numel(), generator=self.generator)[:k_old]])
            self.class_seen[c] = seen_before + n_new[c]
        old_idx = torch.cat(keep_old) if keep_old else torch.empty(0, dtype=torch.long)
        new_idx = torch.cat(take_new) if take_new else torch.empty(0, dtype=torch.long)
        kept = Split(self.x[old_idx].clone(), self.y[old_idx].clone(), self.t[old_idx].clone())
        kept_n = old_idx.numel()
        self._write(torch.arange(kept_n), kept, torch.arange(kept_n))
        self._write(torch.arange(kept_n, kept_n + new_idx.numel()), data, new_idx)
        if data.t is None:
            self.t[kept_n : kept_n + new_idx.numel()] = -1
        self.size = kept_n + new_idx.numel()
        self.seen += len(data)

    def sample(self, n: int) -> Split:
        """`n` distinct stored samples, chosen uniformly (all of them, shuffled, if fewer are stored)."""
        return self.take(self.sample_index(n))

    def sample_index(self, n: int) -> torch.Tensor:
        """The slots of `n` distinct stored samples, chosen uniformly (as `sample` chooses them); read them
        with `take(index)` and `extra[name][index]`."""
        return torch.randperm(self.size, generator=self.generator)[:n]

    def take(self, index: torch.Tensor) -> Split:
        """The stored samples in slots `index` (task labels only if every one of them has one)."""
        assert self.x is not None and self.y is not None and self.t is not None
        t = self.t[index]
        return Split(self.x[index], self.y[index], t if bool((t >= 0).all()) else None)

    def remove(self, drop: torch.Tensor) -> int:
        """Delete the stored samples where `drop` ([size] bool) is True (data deleted on request): the
        others move up, keeping their order; the freed slots are zeroed. Returns how many were removed.
        Counts of samples offered (`seen`) are kept, so later reservoir draws stay unbiased."""
        if self.x is None or self.size == 0:
            return 0
        assert self.y is not None and self.t is not None
        if drop.shape != (self.size,):
            raise ConfigError(
                f"remove() takes one flag per stored sample ({self.size}), got {tuple(drop.shape)}"
            )
        keep = torch.nonzero(~drop).squeeze(1)
        removed = self.size - int(keep.numel())
        if removed == 0:
            return 0
        for tensor in (self.x, self.y, self.t, *self.extra.values()):
            kept = tensor[keep].clone()
            tensor[: kept.shape[0]] = kept
            tensor[kept.shape[0] : self.size] = -1 if tensor is self.t else 0
        self.size = int(keep.numel())
        return removed

    def contents(self) -> Split:
        assert self.x is not None and self.y is not None and self.t is not None
        return Split(self.x[: self.size], self.y[: self.size], self.t[: self.size])

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "capacity": self.capacity,
            "policy": self.policy,
            "size": self.size,
            "seen": self.seen,
            "class_seen": {str(c): n for c, n in self.class_seen.items()},
            "generator": self.generator.get_state(),
        }
        if self.x is not None:
            state.update({"x": self.x, "y": self.y, "t": self.t})
        state.update({f"extra.{name}": value for name, value in self.extra.items()})
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if int(state["capacity"]) != self.capacity or state["policy"] != self.policy:
            raise ConfigError(
                f"saved memory has capacity {state['capacity']} and policy {state['policy']!r}, but this "
                f"memory has {self.capacity} and {self.policy!r}"
            )
        self.size, self.seen = int(state["size"]), int(state["seen"])
        self.class_seen = {int(c): int(n) for c, n in state.get("class_seen", {}).items()}
        self.generator.set_state(state["generator"])
        if "x" in state:
            self.x, self.y, self.t = state["x"], state["y"], state["t"]
        self.extra = {k.removeprefix("extra."): v for k, v in state.items() if k.startswith("extra.")}


def _balanced_quota(available: dict[int, int], capacity: int) -> dict[int, int]:
    """Water-filling: equal shares, and what a short class cannot use goes to the others."""
    quota = {c: 0 for c in available}
    left = capacity
    open_classes = sorted(available, key=lambda c: (available[c], c))
    while open_classes and left > 0:
        share, extra = divmod(left, len(open_classes))
        c = open_classes[0]
        if available[c] <= share:  # the smallest class takes all it has
            quota[c] = available[c]
            left -= available[c]
            open_classes.pop(0)
            continue
        for i, c in enumerate(sorted(open_classes)):
            quota[c] = share + (1 if i < extra else 0)
        break
    return quota
