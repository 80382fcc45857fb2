"""Figures derived from the matrix R, where R[i][j] is the metric on experience j's test set after training
on experience i (T experiences).

- ACC: mean of the last row, mean_j R[T-1][j].
- BWT (backward transfer): mean over j < T-1 of R[T-1][j] - R[j][j]. Negative for accuracy means forgetting.
- FWT (forward transfer): mean over j > 0 of R[j-1][j] - b[j], where b[j] is the metric of the model before
  any training (the reference "trained on nothing"). None when T == 1 or b is unknown.
- Forgetting: mean over j < T-1 of (best value of R[i][j] for j <= i < T-1) - R[T-1][j], "best" the maximum
  for accuracy; for perplexity the sign is flipped so that positive always means "forgot".
- Plasticity: mean of R[i][i], how well each experience is learnt when it is current.

BWT and FWT are raw differences of the metric; for perplexity a positive BWT therefore means worse.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def acc(matrix: Sequence[Sequence[float]]) -> float:
    return _mean(matrix[-1])


def bwt(matrix: Sequence[Sequence[float]]) -> float:
    t = len(matrix)
    if t < 2:
        return 0.0
    return _mean([matrix[-1][j] - matrix[j][j] for j in range(t - 1)])


def fwt(matrix: Sequence[Sequence[float]], initial: Sequence[float] | None) -> float | None:
    t = len(matrix)
    if t < 2 or initial is None:
        return None
    return _mean([matrix[j - 1][j] - initial[j] for j in range(1, t)])


def forgetting(matrix: Sequence[Sequence[float]], higher_is_better: bool = True) -> float:
    t = len(matrix)
    if t < 2:
        return 0.0
    sign = 1.0 if higher_is_better else -1.0
    drops = []
    for j in range(t - 1):
        earlier = [matrix[i][j] for i in range(j, t - 1)]
        best = max(earlier) if higher_is_better else min(earlier)
        drops.append(sign * (best - matrix[-1][j]))
    return _mean(drops)


def plasticity(matrix: Sequence[Sequence[float]]) -> float:
    return _mean([matrix[i][i] for i in range(len(matrix))])


def summary(
    matrix: Sequence[Sequence[float]], initial: Sequence[float] | None = None, higher_is_better: bool = True
) -> dict[str, float | None]:
    """All derived figures of a square matrix, as stored in results.json."""
    if not matrix or any(len(row) != len(matrix) for row in matrix):
        raise ValueError(f"the matrix must be square and non-empty, got rows of {[len(r) for r in matrix]}")
    return {
        "acc": acc(matrix),
        "bwt": bwt(matrix),
        "fwt": fwt(matrix, initial),
        "forgetting": forgetting(matrix, higher_is_better),
        "plasticity": plasticity(matrix),
    }


def stability_gap(
    evals: Sequence[dict[str, Any]],
    matrix: Sequence[Sequence[float]],
    start_steps: Sequence[int],
    higher_is_better: bool = True,
    tolerance: float = 0.01,
) -> list[dict[str, Any]] | None:
    """The dip on old experiences right after each experience switch (De Lange et al., 2023).

    For each experience i > 0, the mean metric over old experiences j < i is followed through the
    evaluations made while training on i (`evals`: {"step", "experience", "values"}). `before` is that mean
    at the end of experience i-1 (from the matrix), `min` the worst value reached during i (the maximum for
    perplexity), `depth` how far it fell (always >= 0 when it got worse), `final` the value when i ended,
    and `steps_to_recover` the optimizer steps from the start of i until the mean came back within
    `tolerance` of `before` after its worst point (None if it never did). Returns None without evaluations.
    """
    if not evals:
        return None
    sign = 1.0 if higher_is_better else -1.0
    gaps = []
    for i in range(1, len(matrix)):
        points = [e for e in evals if e["experience"] == i]
        if not points:
            continue
        before = _mean(matrix[i - 1][:i])
        curve = [(e["step"], _mean(e["values"][:i])) for e in points]
        worst_step, worst = min(curve, key=lambda p: sign * p[1])
        recovered = next((s for s, v in curve if s >= worst_step and sign * (before - v) <= tolerance), None)
        gaps.append(
            {
                "experience": i,
                "before": before,
                "min": worst,
                "min_step": worst_step,
                "depth": max(0.0, sign * (before - worst)),
                "final": _mean(matrix[i][:i]),
                "steps_to_recover": None if recovered is None else recovered - start_steps[i],
            }
        )
    return gaps
