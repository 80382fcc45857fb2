"""Figures derived from the matrix R, where R[i][j] is the metric on experience j's test set after training
on experience i (T experiences).

- ACC: mean of the last row, mean_j R[T-1][j].
- BWT (backward transfer): mean over j < T-1 of R[T-1][j] - R[j][j]. Negative for accuracy means forgetting.
- FWT (forward transfer): mean over j > 0 of R[j-1][j] - b[j], where b[j] is the metric of the model before
  any training (the reference "trained on nothing"). None when T == 1, b is unknown, or the caller says the
  reference is meaningless (`fwt_meaningful=False`: class-incremental streams, see FWT_CLASS_INCREMENTAL).
- Forgetting: mean over j < T-1 of (best value of R[i][j] for j <= i < T-1) - R[T-1][j], "best" the maximum
  for accuracy; for perplexity the sign is flipped so that positive always means "forgot".
- Plasticity: mean of R[i][i], how well each experience is learnt when it is current.

BWT and FWT are raw differences of the metric; for perplexity a positive BWT therefore means worse.

For perplexity, whose values span orders of magnitude, forgetting is also measured on the log scale (log
perplexity is the mean token loss, in nats): for each old experience j < T-1,
log R[T-1][j] - min over j <= i < T-1 of log R[i][j], how much the loss on j rose from its best after j was
learnt (0.1 means the final perplexity is exp(0.1) = 1.105 times the best one). The summary of a perplexity
matrix adds it (`forgetting_log_ppl`, the mean, and `forgetting_log_ppl_per_experience`, one value per old
experience) and the final mean perplexity and log perplexity.

A cell may be None: a run continued with new experiences keeps the rows written before the continuation,
and those rows have no value for the experiences added later (nor has `initial`). Every figure skips the
terms that need a missing cell, and is None when no term is left; "nothing to average" for one experience
stays 0.0 for BWT and forgetting, as before.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

Cell = float | None
Matrix = Sequence[Sequence[Cell]]

# Why FWT says nothing in a class-incremental stream; the learner stores it as summary["fwt_note"].
FWT_CLASS_INCREMENTAL = (
    "meaningless in class-incremental: the untrained model and any model trained only on earlier classes "
    "both score 0 on classes not seen yet, so FWT is 0 by construction"
)


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _cell(matrix: Matrix, i: int, j: int) -> Cell:
    """R[i][j], or None where the row is too short to hold it (a row written before a continuation)."""
    row = matrix[i]
    return row[j] if j < len(row) else None


def acc(matrix: Matrix) -> float | None:
    return _mean([v for v in matrix[-1] if v is not None])


def bwt(matrix: Matrix) -> float | None:
    t = len(matrix)
    if t < 2:
        return 0.0
    terms = []
    for j in range(t - 1):
        last, learnt = _cell(matrix, t - 1, j), _cell(matrix, j, j)
        if last is not None and learnt is not None:
            terms.append(last - learnt)
    return _mean(terms)


def fwt(matrix: Matrix, initial: Sequence[Cell] | None) -> float | None:
    t = len(matrix)
    if t < 2 or initial is None:
        return None
    terms = []
    for j in range(1, t):
        before, reference = _cell(matrix, j - 1, j), initial[j] if j < len(initial) else None
        if before is not None and reference is not None:
            terms.append(before - reference)
    return _mean(terms)


def forgetting(matrix: Matrix, higher_is_better: bool = True) -> float | None:
    t = len(matrix)
    if t < 2:
        return 0.0
    sign = 1.0 if higher_is_better else -1.0
    drops = []
    for j in range(t - 1):
        final = _cell(matrix, t - 1, j)
        earlier = [v for i in range(j, t - 1) if (v := _cell(matrix, i, j)) is not None]
        if final is None or not earlier:
            continue
        best = max(earlier) if higher_is_better else min(earlier)
        drops.append(sign * (best - final))
    return _mean(drops)


def plasticity(matrix: Matrix) -> float | None:
    return _mean([v for i in range(len(matrix)) if (v := _cell(matrix, i, i)) is not None])


def _log(v: Cell) -> float | None:
    """log of a perplexity; None where there is none to take: a missing cell, NaN, or a value <= 0 (no
    perplexity is below 1, so such a cell is not a measurement). An infinite perplexity stays infinite."""
    return math.log(v) if v is not None and v > 0 else None


def forgetting_log_ppl_per_experience(matrix: Matrix) -> list[float | None]:
    """For each old experience j < T-1: log R[T-1][j] - min over j <= i < T-1 of log R[i][j], the rise of the
    loss on j from the best it was after j was learnt (positive means forgotten); None where the final cell
    or every earlier one is missing. Empty for a single experience.

    >>> [round(f, 4) for f in forgetting_log_ppl_per_experience([[10.0, 90.0], [20.0, 12.0]])]
    [0.6931]
    """
    t = len(matrix)
    out: list[float | None] = []
    for j in range(t - 1):
        final = _log(_cell(matrix, t - 1, j))
        earlier = [v for i in range(j, t - 1) if (v := _log(_cell(matrix, i, j))) is not None]
        out.append(None if final is None or not earlier else final - min(earlier))
    return out


def forgetting_log_ppl(matrix: Matrix) -> float | None:
    """Mean of `forgetting_log_ppl_per_experience` over the old experiences that have a value; 0.0 for a
    single experience (nothing to forget), None when no old experience has one."""
    if len(matrix) < 2:
        return 0.0
    return _mean([v for v in forgetting_log_ppl_per_experience(matrix) if v is not None])


def perplexity_summary(matrix: Matrix) -> dict[str, Any]:
    """The figures only a perplexity matrix has: `forgetting_log_ppl` (mean) and
    `forgetting_log_ppl_per_experience` (list over j < T-1), `final_mean_perplexity` (mean of the last row)
    and `final_mean_log_perplexity` (mean of its logs: the mean final loss over the test sets)."""
    last = matrix[-1]
    return {
        "forgetting_log_ppl": forgetting_log_ppl(matrix),
        "forgetting_log_ppl_per_experience": forgetting_log_ppl_per_experience(matrix),
        "final_mean_perplexity": acc(matrix),
        "final_mean_log_perplexity": _mean([v for c in last if (v := _log(c)) is not None]),
    }


def summary(
    matrix: Matrix,
    initial: Sequence[Cell] | None = None,
    higher_is_better: bool = True,
    fwt_meaningful: bool = True,
    metric: str | None = None,
) -> dict[str, Any]:
    """All derived figures of a square matrix, as stored in results.json.

    Keys: acc, bwt, fwt, forgetting, plasticity (float or None). With `fwt_meaningful=False` (pass it when
    the experiences hold disjoint classes) "fwt" is None and "fwt_note" says why. For a perplexity matrix
    (`metric="perplexity"`; without `metric`, any lower-is-better matrix, perplexity being the only such
    metric) the keys of `perplexity_summary` are added.
    """
    if not matrix or any(len(row) != len(matrix) for row in matrix):
        raise ValueError(
            f"the matrix must be square and non-empty, got rows of {[len(r) for r in matrix]}; "
            "pad the cells a row has no value for with None"
        )
    out: dict[str, Any] = {
        "acc": acc(matrix),
        "bwt": bwt(matrix),
        "fwt": fwt(matrix, initial) if fwt_meaningful else None,
        "forgetting": forgetting(matrix, higher_is_better),
        "plasticity": plasticity(matrix),
    }
    if not fwt_meaningful:
        out["fwt_note"] = FWT_CLASS_INCREMENTAL
    if metric == "perplexity" or (metric is None and not higher_is_better):
        out.update(perplexity_summary(matrix))
    return out


def _mean_of(values: Sequence[Any], upto: int) -> float | None:
    """Mean of the defined values among the first `upto` (the old experiences' test sets)."""
    return _mean([float(v) for v in values[:upto] if v is not None])


def stability_gap(
    evals: Sequence[dict[str, Any]],
    matrix: Matrix,
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

    Missing (None) values are left out of each mean; a mean with no value left is None, and so are the
    figures that need it (`depth` and `steps_to_recover` without `before`). An experience none of whose
    evaluations has a defined value is skipped like one without evaluations.
    """
    if not evals:
        return None
    sign = 1.0 if higher_is_better else -1.0
    gaps = []
    for i in range(1, len(matrix)):
        points = [e for e in evals if e["experience"] == i]
        curve = [(e["step"], m) for e in points if (m := _mean_of(e["values"], i)) is not None]
        if not curve:
            continue
        before = _mean_of(matrix[i - 1], i)
        worst_step, worst = min(curve, key=lambda p: sign * p[1])
        recovered = (
            None
            if before is None
            else next((s for s, v in curve if s >= worst_step and sign * (before - v) <= tolerance), None)
        )
        gaps.append(
            {
                "experience": i,
                "before": before,
                "min": worst,
                "min_step": worst_step,
                "depth": None if before is None else max(0.0, sign * (before - worst)),
                "final": _mean_of(matrix[i], i),
                "steps_to_recover": None if recovered is None else recovered - start_steps[i],
            }
        )
    return gaps
