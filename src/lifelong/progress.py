"""Progress bars for long training, which a user can turn off (`progress=False`, `--no-progress`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn


class TrainingProgress:
    """One bar per experience, refreshed a few times a second (never per step: it would cost time)."""

    def __init__(self, enabled: bool = True, console: Console | None = None) -> None:
        self.enabled = enabled
        self.console = console or Console(stderr=True)
        self._progress: Progress | None = None
        self._task: TaskID | None = None
        self._every = 1
        self._done = 0
        self._speed = ""

    def __enter__(self) -> TrainingProgress:
        if self.enabled:
            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("{task.fields[loss]}"),
                console=self.console,
                transient=False,
                refresh_per_second=4,
            )
            self._progress.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)

    def start_experience(self, index: int, count: int, total_steps: int, done: int) -> None:
        if self._progress is None:
            return
        self._every = max(1, total_steps // 50)
        self._done = done
        self._task = self._progress.add_task(
            f"experience {index + 1}/{count}", total=total_steps, completed=done, loss=""
        )

    def show_loss(self, loss: float, lr: float) -> None:
        """The training loss and LR of the latest logged step (every `train.log_every` steps)."""
        if self._progress is None or self._task is None:
            return
        self._progress.update(self._task, loss=f"loss {loss:.4g}  lr {lr:.3g}{self._speed}")

    def show_tokens_per_step(self, tokens: int) -> None:
        """Language models: the most tokens one optimizer step trains on (batch x accumulation x block)."""
        if self._progress is None or self._task is None:
            return
        task = self._progress.tasks[-1]
        self._progress.update(self._task, description=f"{task.description} · {tokens:,} tok/step")

    def show_speed(self, tokens_per_second: float) -> None:
        """Language models: training tokens per second in this experience, shown with the next loss."""
        self._speed = f"  {tokens_per_second:,.0f} tok/s"

    def advance(self, step: int) -> None:
        if self._progress is None or self._task is None:
            return
        self._done += 1
        if self._done % self._every == 0:
            self._progress.update(self._task, completed=self._done)

    def end_experience(self, index: int, metric: str, seen: Sequence[float]) -> None:
        if self._progress is None or self._task is None:
            return
        self._progress.update(self._task, completed=self._progress.tasks[-1].total)
        values = " ".join(f"{v:.3f}" for v in seen)
        self._progress.console.print(
            f"  after experience {index + 1}: {metric} on experiences seen [{values}]"
        )
