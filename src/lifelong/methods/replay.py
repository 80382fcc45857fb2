"""Experience replay (ER): mix samples from a memory of past data into every training batch.

Two ways to mix:
- added (default): `batch_size` replayed samples are appended to each batch (one concatenated forward
  pass, so the loss is the mean over both): the classic ER of class-incremental learning.
- by share (`ratio`): that share of every batch's sequences is replaced by replayed ones, so an update
  costs the same tokens with or without replay. This is the replay of continual pre-training ("Simple and
  Scalable Strategies to Continually Pre-train Large Language Models", Ibrahim et al., 2024: 1-25 % of each
  batch from earlier data). A share of a batch is rarely a whole number of sequences: the count per batch
  is the running total `round(ratio x sequences so far)` minus what was replayed so far, so over a run the
  share is exact and every batch's count is a pure function of the method's state.

Where replayed samples come from (`source`):
- `memory` (default): a reservoir (or class-balanced) memory of `memory` samples, filled online during the
  first epoch of each experience (by share: with each experience once it is over, so that only earlier
  experiences are replayed); for language models `memory_tokens` gives the budget in tokens instead.
- `stream`: the earlier experiences' own training data, as the paper does, referenced instead of copied (for
  token streams that data is the cached token array): the state holds no samples, only counters.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from lifelong.errors import ConfigError
from lifelong.memory import ReplayMemory
from lifelong.methods.base import Context, Method
from lifelong.streams.experience import Split, Stream


class Replay(Method):
    """`memory`: number of stored samples (`memory_tokens`: a budget in tokens, for language models);
    `batch_size`: replayed samples added to each batch (default: as many as the batch has); `ratio`: instead,
    the share of each batch's samples replaced by replayed ones; `policy`: 'reservoir' or 'class_balanced';
    `source`: 'memory' or 'stream' (sample the earlier experiences' own data, no copy)."""

    name = "replay"
    rehearsal = True

    def __init__(
        self,
        memory: int = 500,
        batch_size: int | None = None,
        policy: str = "reservoir",
        seed: int = 0,
        *,
        ratio: float | None = None,
        memory_tokens: int | None = None,
        source: str = "memory",
    ) -> None:
        if batch_size is not None and batch_size < 1:
            raise ConfigError(f"replay batch_size must be at least 1, got {batch_size}")
        if policy not in ("reservoir", "class_balanced"):
            raise ConfigError(f"unknown replay policy {policy!r}; choose 'reservoir' or 'class_balanced'")
        if ratio is not None and not 0.0 < ratio < 1.0:
            raise ConfigError(
                f"replay ratio is the share of each batch replayed: between 0 and 1, got {ratio}"
            )
        if ratio is not None and batch_size is not None:
            raise ConfigError(
                "give replay either `ratio` (share of each batch) or `batch_size` (added), not both"
            )
        if memory_tokens is not None and memory_tokens < 1:
            raise ConfigError(f"replay memory_tokens must be at least 1, got {memory_tokens}")
        if source not in ("memory", "stream"):
            raise ConfigError(f"unknown replay source {source!r}; choose 'memory' or 'stream'")
        if source == "stream" and (memory_tokens is not None or policy != "reservoir"):
            raise ConfigError(
                "replay source 'stream' samples the earlier experiences' own data: it has no memory to size "
                "(memory_tokens) or balance (policy); drop those options or use source 'memory'"
            )
        self.memory_size, self.batch_size, self.policy, self.seed = memory, batch_size, policy, seed
        self.ratio, self.memory_tokens, self.source = ratio, memory_tokens, source
        self.memory = ReplayMemory(memory, policy, seed)
        self.offered = 0  # with `ratio`: samples of batches so far, and how many of them were replayed
        self.replayed = 0

    def params(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "memory": self.memory_size,
            "batch_size": self.batch_size,
            "policy": self.policy,
        }
        if self.ratio is not None:
            out["ratio"] = self.ratio
        if self.memory_tokens is not None:
            out["memory_tokens"] = self.memory_tokens
        if self.source != "memory":
            out["source"] = self.source
        return out

    def check(self, stream: Stream, objective: Any, methods: Sequence[Method]) -> None:
        if self.policy == "class_balanced" and stream.kind != "classification":
            raise ConfigError(
                "replay policy 'class_balanced' needs class labels; a language-modelling stream has none: "
                "use policy 'reservoir'"
            )
        if self.memory_tokens is not None:
            if stream.kind != "language_modeling":
                raise ConfigError(
                    "replay memory_tokens is a budget for token blocks; give `memory` (samples)"
                )
            block = int(stream.input_shape[0])
            if self.memory_tokens < block:
                raise ConfigError(
                    f"replay memory_tokens={self.memory_tokens} holds no block of {block} tokens; give at "
                    f"least {block}"
                )
            self.memory_size = self.memory_tokens // block
            self.memory = ReplayMemory(self.memory_size, self.policy, self.seed)

    def batch(self, ctx: Context, batch: Split) -> Split:
        if self.ratio is not None:
            return self._replace_share(ctx, batch)
        replayed = self.memory.sample(self.batch_size or len(batch)) if len(self.memory) else None
        if self.source == "memory" and self.policy == "reservoir" and ctx.epoch == 0:
            self.memory.add(batch)  # after sampling, so a batch never replays itself
        if self.source == "stream":
            replayed = self._from_stream(ctx, self.batch_size or len(batch))
        if replayed is None:
            return batch
        return _joined(batch, replayed)

    def _replace_share(self, ctx: Context, batch: Split) -> Split:
        has_old = ctx.index > 0 if self.source == "stream" else len(self.memory) > 0
        count = 0
        if has_old:
            target = round((self.offered + len(batch)) * self.ratio)  # type: ignore[operator]
            count = min(max(target - self.replayed, 0), len(batch))
            if self.source == "memory":
                count = min(count, len(self.memory))
            self.offered += len(batch)
            self.replayed += count
        kept = (
            batch
            if count == 0
            else Split(
                batch.x[: len(batch) - count],
                batch.y[: len(batch) - count],
                None if batch.t is None else batch.t[: len(batch) - count],
            )
        )
        replayed = None
        if count:
            replayed = self._from_stream(ctx, count) if self.source == "stream" else self.memory.sample(count)
        return kept if replayed is None else _joined(kept, replayed)

    def _from_stream(self, ctx: Context, count: int) -> Split | None:
        """`count` samples drawn uniformly from the training data of the experiences before this one."""
        earlier = [e.train for e in ctx.seen[:-1]]
        sizes = torch.tensor([len(s) for s in earlier], dtype=torch.long)
        if not earlier or int(sizes.sum()) == 0:
            return None
        # a generator per draw, seeded by the position: resuming needs no RNG state
        gen = torch.Generator().manual_seed(_mix(self.seed, ctx.step, self.replayed, self.offered))
        picks = torch.randint(int(sizes.sum()), (count,), generator=gen)
        bounds = torch.cumsum(sizes, 0)
        which = torch.searchsorted(bounds, picks, right=True)
        rows = picks - (bounds[which] - sizes[which])
        parts = [earlier[int(e)].subset(rows[which == e]) for e in which.unique()]
        return Split.concat(parts) if len(parts) > 1 else parts[0]

    def end(self, ctx: Context) -> None:
        if self.policy == "class_balanced":
            self.memory.rebalance(ctx.experience.train)
        elif self.ratio is not None and self.source == "memory":
            # by share, the memory holds earlier experiences only (replaying the current one's own batches
            # would spend the share on data being trained on anyway): the reservoir sees each experience
            # once it is over, in order
            self.memory.add(ctx.experience.train)

    def state_dict(self) -> dict[str, Any]:
        counters = {"offered": self.offered, "replayed": self.replayed}
        return {**counters, **{f"memory.{k}": v for k, v in self.memory.state_dict().items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.memory_tokens is not None and "memory.capacity" in state:
            # sized from the stream's block size in `check`, which loading for inference does not call
            self.memory_size = int(state["memory.capacity"])
            self.memory = ReplayMemory(self.memory_size, self.policy, self.seed)
        self.offered = int(state.get("offered", 0))
        self.replayed = int(state.get("replayed", 0))
        self.memory.load_state_dict(
            {k.removeprefix("memory."): v for k, v in state.items() if k.startswith("memory.")}
        )


def _joined(batch: Split, replayed: Split) -> Split:
    if (batch.t is None) != (replayed.t is None):
        raise ConfigError("cannot replay samples with task labels into a stream without them")
    return Split.concat([batch, replayed])


def _mix(*values: int) -> int:
    h = 1469598103934665603
    for v in values:
        h = ((h ^ (v & 0xFFFFFFFF)) * 1099511628211) % (1 << 63)
    return h
