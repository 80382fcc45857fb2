"""Derived metrics of the matrix R (acc, bwt, fwt, forgetting, plasticity) and the stability gap, checked
against numbers worked out by hand in the comments."""

from __future__ import annotations

import math

import pytest

from lifelong.evaluation import metrics

# --- a 3x3 accuracy matrix ----------------------------------------------------------------------------
# R[i][j]: accuracy on experience j after training on experience i.
R3 = [
    [0.90, 0.10, 0.05],
    [0.70, 0.85, 0.15],
    [0.60, 0.75, 0.80],
]
B3 = [0.10, 0.08, 0.12]  # before any training
# acc        = (0.60 + 0.75 + 0.80) / 3                       = 2.15 / 3 = 0.716666...
# bwt        = ((0.60 - 0.90) + (0.75 - 0.85)) / 2            = (-0.30 - 0.10) / 2 = -0.20
# fwt        = ((R[0][1] - b1) + (R[1][2] - b2)) / 2
#            = ((0.10 - 0.08) + (0.15 - 0.12)) / 2            = (0.02 + 0.03) / 2 = 0.025
# forgetting = j=0: max(0.90, 0.70) - 0.60 = 0.30; j=1: 0.85 - 0.75 = 0.10 -> 0.20
# plasticity = (0.90 + 0.85 + 0.80) / 3                       = 2.55 / 3 = 0.85
EXPECTED3 = {"acc": 2.15 / 3, "bwt": -0.20, "fwt": 0.025, "forgetting": 0.20, "plasticity": 0.85}

# --- a 4x4 accuracy matrix, where the best earlier value is not always on the diagonal -------------
R4 = [
    [0.80, 0.90, 0.20, 0.10],  # R[0][1] = 0.90: high before experience 1 was trained (not "learnt" yet)
    [0.85, 0.70, 0.30, 0.20],  # R[1][0] = 0.85 > R[0][0]: experience 0 still improved after it
    [0.60, 0.65, 0.75, 0.40],
    [0.50, 0.60, 0.55, 0.70],
]
B4 = [0.10, 0.20, 0.05, 0.15]
# acc        = (0.50 + 0.60 + 0.55 + 0.70) / 4                 = 2.35 / 4 = 0.5875
# bwt        = ((0.50-0.80) + (0.60-0.70) + (0.55-0.75)) / 3   = (-0.30 - 0.10 - 0.20) / 3 = -0.20
# fwt        = ((0.90-0.20) + (0.30-0.05) + (0.40-0.15)) / 3   = (0.70 + 0.25 + 0.25) / 3 = 0.40
# forgetting: the best of R[i][j] over j <= i < T-1 (from when j was learnt until before the last one)
#   j=0: max(0.80, 0.85, 0.60) = 0.85 -> 0.85 - 0.50 = 0.35
#   j=1: max(0.70, 0.65)       = 0.70 -> 0.70 - 0.60 = 0.10   (R[0][1] = 0.90 is before learning: ignored)
#   j=2: max(0.75)             = 0.75 -> 0.75 - 0.55 = 0.20
#   mean = 0.65 / 3 = 0.216666...
# plasticity = (0.80 + 0.70 + 0.75 + 0.70) / 4                 = 2.95 / 4 = 0.7375
EXPECTED4 = {"acc": 0.5875, "bwt": -0.20, "fwt": 0.40, "forgetting": 0.65 / 3, "plasticity": 0.7375}


@pytest.mark.parametrize(("matrix", "initial", "expected"), [(R3, B3, EXPECTED3), (R4, B4, EXPECTED4)])
def test_each_metric_matches_hand_computation(matrix, initial, expected) -> None:
    assert metrics.acc(matrix) == pytest.approx(expected["acc"])
    assert metrics.bwt(matrix) == pytest.approx(expected["bwt"])
    assert metrics.fwt(matrix, initial) == pytest.approx(expected["fwt"])
    assert metrics.forgetting(matrix) == pytest.approx(expected["forgetting"])
    assert metrics.plasticity(matrix) == pytest.approx(expected["plasticity"])


@pytest.mark.parametrize(("matrix", "initial", "expected"), [(R3, B3, EXPECTED3), (R4, B4, EXPECTED4)])
def test_summary_holds_every_metric(matrix, initial, expected) -> None:
    s = metrics.summary(matrix, initial)
    assert set(s) == {"acc", "bwt", "fwt", "forgetting", "plasticity"}
    for k, v in expected.items():
        assert s[k] == pytest.approx(v), k
    # without the untrained reference there is no forward transfer; the rest is unchanged
    s = metrics.summary(matrix)
    assert s["fwt"] is None
    assert s["acc"] == pytest.approx(expected["acc"]) and s["bwt"] == pytest.approx(expected["bwt"])


def test_fwt_is_none_without_initial() -> None:
    assert metrics.fwt(R3, None) is None


# --- perplexity: lower is better ----------------------------------------------------------------------
P3 = [
    [10.0, 50.0, 60.0],
    [14.0, 12.0, 55.0],
    [20.0, 13.0, 11.0],
]


def test_forgetting_is_positive_when_perplexity_rose() -> None:
    # best = the minimum over j <= i < T-1, and the sign is flipped:
    #   j=0: min(10, 14) = 10 -> -(10 - 20) = 10
    #   j=1: min(12)     = 12 -> -(12 - 13) = 1
    #   mean = 5.5
    assert metrics.forgetting(P3, higher_is_better=False) == pytest.approx(5.5)
    # read as an accuracy the same numbers would mean "improved": max(10, 14) - 20 = -6; 12 - 13 = -1
    assert metrics.forgetting(P3, higher_is_better=True) == pytest.approx(-3.5)
    # BWT stays the raw difference: ((20 - 10) + (13 - 12)) / 2 = 5.5, positive = worse for perplexity
    assert metrics.bwt(P3) == pytest.approx(5.5)


def test_perplexity_that_fell_gives_negative_forgetting() -> None:
    # j=0: min(30, 25) = 25 -> -(25 - 20) = -5 (the model got better on experience 0)
    p = [[30.0, 90.0], [20.0, 15.0]]
    assert metrics.forgetting(p, higher_is_better=False) == pytest.approx(-(30.0 - 20.0))
    p = [[30.0, 90.0, 90.0], [25.0, 15.0, 90.0], [20.0, 15.0, 12.0]]
    # j=0: -(25 - 20) = -5; j=1: -(15 - 15) = 0 -> -2.5
    assert metrics.forgetting(p, higher_is_better=False) == pytest.approx(-2.5)


def test_summary_passes_the_direction_on() -> None:
    s = metrics.summary(P3, [100.0, 100.0, 100.0], higher_is_better=False)
    assert s["forgetting"] == pytest.approx(5.5)
    assert s["acc"] == pytest.approx((20 + 13 + 11) / 3)
    # fwt: ((50 - 100) + (55 - 100)) / 2 = -47.5 (raw difference; negative = better for perplexity)
    assert s["fwt"] == pytest.approx(-47.5)
    assert s["plasticity"] == pytest.approx((10 + 12 + 11) / 3)


# --- edge cases ---------------------------------------------------------------------------------------


def test_single_experience() -> None:
    m = [[0.7]]
    assert metrics.acc(m) == pytest.approx(0.7)
    assert metrics.bwt(m) == 0.0
    assert metrics.fwt(m, [0.1]) is None
    assert metrics.forgetting(m) == 0.0
    assert metrics.forgetting(m, higher_is_better=False) == 0.0
    assert metrics.plasticity(m) == pytest.approx(0.7)
    assert metrics.summary(m, [0.1]) == {
        "acc": pytest.approx(0.7),
        "bwt": 0.0,
        "fwt": None,
        "forgetting": 0.0,
        "plasticity": pytest.approx(0.7),
    }


@pytest.mark.parametrize(
    "bad",
    [
        [[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]],  # 2 x 3
        [[0.1, 0.2], [0.3]],  # ragged
        [[0.1], [0.2]],  # 2 x 1
        [],
    ],
)
def test_non_square_matrix_raises(bad) -> None:
    with pytest.raises(ValueError, match="square"):
        metrics.summary(bad)


# --- stability gap ------------------------------------------------------------------------------------

GAP_MATRIX = [
    [0.90, 0.10, 0.10],
    [0.60, 0.88, 0.10],
    [0.70, 0.72, 0.85],
]
GAP_STARTS = [0, 10, 20]  # optimizer step at which each experience began


def _eval(step: int, experience: int, values: list[float]) -> dict:
    return {"step": step, "experience": experience, "values": values}


GAP_EVALS = [
    # during experience 0 there is no old experience: ignored
    _eval(5, 0, [0.50, 0.10, 0.10]),
    _eval(10, 0, [0.90, 0.10, 0.10]),
    # experience 1: old = [0]; before = R[0][0] = 0.90
    _eval(12, 1, [0.50, 0.30, 0.10]),  # 0.50
    _eval(14, 1, [0.40, 0.50, 0.10]),  # 0.40  <- worst
    _eval(16, 1, [0.85, 0.70, 0.10]),  # 0.85  (0.90 - 0.85 = 0.05 > 0.01: not yet)
    _eval(18, 1, [0.895, 0.80, 0.10]),  # 0.895 (0.005 <= 0.01: recovered, 18 - 10 = 8 steps)
    _eval(20, 1, [0.60, 0.88, 0.10]),  # 0.60
    # experience 2: old = [0, 1]; before = (0.60 + 0.88) / 2 = 0.74
    _eval(21, 2, [0.74, 0.74, 0.10]),  # 0.74 (within tolerance, but before the worst point: no recovery)
    _eval(22, 2, [0.70, 0.60, 0.20]),  # 0.65
    _eval(24, 2, [0.50, 0.50, 0.40]),  # 0.50  <- worst
    _eval(26, 2, [0.60, 0.70, 0.60]),  # 0.65
    _eval(28, 2, [0.70, 0.72, 0.85]),  # 0.71  (0.74 - 0.71 = 0.03 > 0.01: never recovers)
]


def test_stability_gap_hand_checked() -> None:
    gaps = metrics.stability_gap(GAP_EVALS, GAP_MATRIX, GAP_STARTS)
    assert gaps is not None and [g["experience"] for g in gaps] == [1, 2]
    g1, g2 = gaps
    assert g1["before"] == pytest.approx(0.90)
    assert g1["min"] == pytest.approx(0.40) and g1["min_step"] == 14
    assert g1["depth"] == pytest.approx(0.50)  # 0.90 - 0.40
    assert g1["final"] == pytest.approx(0.60)  # mean(R[1][:1])
    assert g1["steps_to_recover"] == 8  # step 18 - start 10

    assert g2["before"] == pytest.approx(0.74)
    assert g2["min"] == pytest.approx(0.50) and g2["min_step"] == 24
    assert g2["depth"] == pytest.approx(0.24)  # 0.74 - 0.50
    assert g2["final"] == pytest.approx(0.71)  # (0.70 + 0.72) / 2
    assert g2["steps_to_recover"] is None  # never back within 0.01 after step 24


def test_stability_gap_tolerance() -> None:
    # with tolerance 0.05, experience 2 recovers at step 28 (0.03 <= 0.05): 28 - 20 = 8 steps;
    # experience 1 now recovers at step 16 (0.05 <= 0.05, up to float rounding: use 0.051): 16 - 10 = 6
    gaps = metrics.stability_gap(GAP_EVALS, GAP_MATRIX, GAP_STARTS, tolerance=0.051)
    assert gaps is not None
    assert [g["steps_to_recover"] for g in gaps] == [6, 8]
    assert [g["min_step"] for g in gaps] == [14, 24]  # the worst point does not depend on the tolerance


def test_stability_gap_skips_experiences_without_evals() -> None:
    gaps = metrics.stability_gap([e for e in GAP_EVALS if e["experience"] == 2], GAP_MATRIX, GAP_STARTS)
    assert gaps is not None and [g["experience"] for g in gaps] == [2]
    assert gaps[0]["depth"] == pytest.approx(0.24)


def test_stability_gap_without_a_dip() -> None:
    # the old accuracy only rises: depth 0, and it is "recovered" at its worst (first) point
    evals = [_eval(12, 1, [0.92, 0.5]), _eval(14, 1, [0.95, 0.8])]
    (g,) = metrics.stability_gap(evals, [[0.90, 0.1], [0.95, 0.85]], [0, 10])
    assert g["depth"] == 0.0 and g["min"] == pytest.approx(0.92) and g["min_step"] == 12
    assert g["steps_to_recover"] == 2


def test_stability_gap_perplexity_direction() -> None:
    matrix = [[10.0, 50.0], [14.0, 12.0]]
    # before = 10; the worst point is the HIGHEST perplexity
    evals = [
        _eval(6, 1, [18.0, 40.0]),  # 18 <- worst
        _eval(7, 1, [12.0, 30.0]),  # 12 - 10 = 2 > 0.01: not recovered
        _eval(8, 1, [10.005, 20.0]),  # 0.005 <= 0.01: recovered, 8 - 5 = 3 steps
        _eval(9, 1, [14.0, 12.0]),
    ]
    (g,) = metrics.stability_gap(evals, matrix, [0, 5], higher_is_better=False)
    assert g["before"] == pytest.approx(10.0)
    assert g["min"] == pytest.approx(18.0) and g["min_step"] == 6
    assert g["depth"] == pytest.approx(8.0)  # -(10 - 18), positive
    assert g["final"] == pytest.approx(14.0)
    assert g["steps_to_recover"] == 3
    # read as accuracy the same curve would have its worst point at the lowest value (step 8)
    (acc_view,) = metrics.stability_gap(evals, matrix, [0, 5], higher_is_better=True)
    assert acc_view["min_step"] == 8 and acc_view["depth"] == 0.0


def test_stability_gap_perplexity_never_recovers() -> None:
    evals = [_eval(6, 1, [18.0, 40.0]), _eval(8, 1, [15.0, 20.0])]
    (g,) = metrics.stability_gap(evals, [[10.0, 50.0], [15.0, 12.0]], [0, 5], higher_is_better=False)
    assert g["depth"] == pytest.approx(8.0) and g["steps_to_recover"] is None


def test_stability_gap_none_without_evals() -> None:
    assert metrics.stability_gap([], GAP_MATRIX, GAP_STARTS) is None


# --- missing cells (a run continued with new experiences) ---------------------------------------------
# Experiences 0 and 1 were trained first; the run was then continued with experience 2. Row 0 (and
# `initial`) were written before experience 2 existed, so they hold None for it; row 1 was re-evaluated.
RN = [
    [0.90, 0.10, None],
    [0.70, 0.85, 0.20],
    [0.60, 0.75, 0.80],
]
BN = [0.10, 0.08, None]
# acc        = (0.60 + 0.75 + 0.80) / 3                 = 0.716666...  (the last row is complete)
# bwt        = ((0.60 - 0.90) + (0.75 - 0.85)) / 2      = -0.20        (unchanged: no None is needed)
# fwt        = j=1: R[0][1] - b1 = 0.10 - 0.08 = 0.02; j=2: b2 is None -> skipped  -> 0.02
# forgetting = j=0: max(0.90, 0.70) - 0.60 = 0.30; j=1: 0.85 - 0.75 = 0.10      -> 0.20
# plasticity = (0.90 + 0.85 + 0.80) / 3                 = 0.85
EXPECTED_N = {"acc": 2.15 / 3, "bwt": -0.20, "fwt": 0.02, "forgetting": 0.20, "plasticity": 0.85}


def test_summary_skips_missing_cells() -> None:
    s = metrics.summary(RN, BN)
    for k, v in EXPECTED_N.items():
        assert s[k] == pytest.approx(v), k
    assert "fwt_note" not in s


def test_missing_cells_drop_only_their_terms() -> None:
    m = [
        [0.90, None, None],
        [None, 0.85, None],
        [0.60, None, 0.80],
    ]
    # acc: (0.60 + 0.80) / 2 = 0.70; bwt: j=0: 0.60 - 0.90 = -0.30, j=1: R[2][1] None -> -0.30
    # fwt: R[0][1] and R[1][2] are None -> no term -> None
    # forgetting: j=0: best of [0.90] (R[1][0] None) - 0.60 = 0.30; j=1: final None -> 0.30
    assert metrics.acc(m) == pytest.approx(0.70)
    assert metrics.bwt(m) == pytest.approx(-0.30)
    assert metrics.fwt(m, [0.1, 0.1, 0.1]) is None
    assert metrics.forgetting(m) == pytest.approx(0.30)
    assert metrics.plasticity(m) == pytest.approx((0.90 + 0.85 + 0.80) / 3)


def test_figures_without_any_defined_term_are_none() -> None:
    m = [[None, None], [None, None]]
    assert metrics.summary(m, [None, None]) == {
        "acc": None,
        "bwt": None,
        "fwt": None,
        "forgetting": None,
        "plasticity": None,
    }


def test_short_rows_read_as_missing_cells() -> None:
    # the single figures accept rows written before a continuation as they are (shorter)
    ragged = [[0.90, 0.10], [0.70, 0.85, 0.20], [0.60, 0.75, 0.80]]
    assert metrics.fwt(ragged, [0.10, 0.08]) == pytest.approx(0.02)
    assert metrics.bwt(ragged) == pytest.approx(-0.20)
    assert metrics.forgetting(ragged) == pytest.approx(0.20)
    # summary still insists on a square matrix, and says how to make one
    with pytest.raises(ValueError, match="pad .* with None"):
        metrics.summary(ragged)


def test_fwt_marked_meaningless_for_class_incremental() -> None:
    s = metrics.summary(R3, B3, fwt_meaningful=False)
    assert s["fwt"] is None
    assert s["fwt_note"] == metrics.FWT_CLASS_INCREMENTAL and "class-incremental" in s["fwt_note"]
    for k in ("acc", "bwt", "forgetting", "plasticity"):
        assert s[k] == pytest.approx(EXPECTED3[k]), k
    # the positional signature of before still works and keeps FWT
    assert metrics.summary(R3, B3, True)["fwt"] == pytest.approx(EXPECTED3["fwt"])


def test_stability_gap_with_missing_values() -> None:
    # experience 2 was added by a continuation: R[1][1] is known, the evals of experience 2 carry None
    # for a test set that was not evaluated (value left out of the mean)
    matrix = [[0.90, 0.10, None], [0.60, 0.88, None], [0.70, 0.72, 0.85]]
    evals = [
        _eval(12, 1, [0.40, 0.50, None]),  # old mean 0.40 <- worst
        _eval(18, 1, [0.895, 0.80, None]),  # 0.895: recovered (0.005), 18 - 10 = 8
        _eval(22, 2, [0.50, None, 0.30]),  # old mean over [0.50] = 0.50 <- worst; before = (0.60+0.88)/2
        _eval(26, 2, [None, None, 0.60]),  # no old value: left out
    ]
    g1, g2 = metrics.stability_gap(evals, matrix, GAP_STARTS)
    assert g1["depth"] == pytest.approx(0.50) and g1["steps_to_recover"] == 8
    assert g2["before"] == pytest.approx(0.74) and g2["min"] == pytest.approx(0.50)
    assert g2["min_step"] == 22 and g2["depth"] == pytest.approx(0.24)
    assert g2["steps_to_recover"] is None
    # an old row with no value at all: no `before`, so no depth and no recovery, but the dip is shown
    (g,) = metrics.stability_gap([_eval(12, 1, [0.4, 0.5])], [[None, None], [0.6, 0.9]], [0, 10])
    assert g["before"] is None and g["depth"] is None and g["steps_to_recover"] is None
    assert g["min"] == pytest.approx(0.4) and g["final"] == pytest.approx(0.6)
    # evaluations without any defined old value: skipped like no evaluations
    assert metrics.stability_gap([_eval(12, 1, [None, 0.5])], [[0.9, 0.1], [0.6, 0.9]], [0, 10]) == []


# --- forgetting in log perplexity ---------------------------------------------------------------------
# For perplexity: per old experience j < T-1, log R[T-1][j] - min over j <= i < T-1 of log R[i][j].
PL = [
    [10.0, 50.0, 60.0],
    [20.0, 12.0, 55.0],
    [40.0, 15.0, 11.0],
]
# j=0: log 40 - min(log 10, log 20) = log(40 / 10) = log 4    = 1.3862944
# j=1: log 15 - log 12              = log(15 / 12) = log 1.25 = 0.2231436
# mean = (log 4 + log 1.25) / 2 = log(5) / 2                    = 0.8047190
# final mean perplexity     = (40 + 15 + 11) / 3 = 22.0
# final mean log perplexity = (log 40 + log 15 + log 11) / 3 = log(6600) / 3 = 2.9316083
LOG_PPL_KEYS = {
    "forgetting_log_ppl",
    "forgetting_log_ppl_per_experience",
    "final_mean_perplexity",
    "final_mean_log_perplexity",
}


def test_forgetting_in_log_perplexity_matches_hand_computation() -> None:
    per = metrics.forgetting_log_ppl_per_experience(PL)
    assert per == pytest.approx([math.log(4.0), math.log(1.25)])
    assert per[0] == pytest.approx(1.3862944) and per[1] == pytest.approx(0.2231436)
    assert metrics.forgetting_log_ppl(PL) == pytest.approx(math.log(5.0) / 2)
    assert metrics.perplexity_summary(PL) == {
        "forgetting_log_ppl": pytest.approx(0.8047190),
        "forgetting_log_ppl_per_experience": pytest.approx([1.3862944, 0.2231436]),
        "final_mean_perplexity": pytest.approx(22.0),
        "final_mean_log_perplexity": pytest.approx(2.9316083),
    }


def test_log_forgetting_starts_from_the_best_after_learning() -> None:
    # j=0 kept improving after it was learnt: its best is R[1][0] = 20, not the diagonal 30
    #   log 40 - log 20 = log 2; R[0][1] = 5 (before experience 1 was learnt) is ignored for j=1:
    #   j=1: log 16 - log 8 = log 2
    m = [[30.0, 5.0, 70.0], [20.0, 8.0, 70.0], [40.0, 16.0, 9.0]]
    assert metrics.forgetting_log_ppl_per_experience(m) == pytest.approx([math.log(2.0), math.log(2.0)])
    # a domain that got better keeps a negative value: log 20 - log 30 = log(2/3)
    assert metrics.forgetting_log_ppl([[30.0, 90.0], [20.0, 15.0]]) == pytest.approx(math.log(2 / 3))


def test_log_forgetting_is_the_log_of_the_perplexity_ratio_whatever_the_scale() -> None:
    # the same relative rise gives the same forgetting at perplexity 10 and at 10000, unlike raw forgetting
    small, large = [[10.0, 99.0], [20.0, 5.0]], [[10000.0, 99.0], [20000.0, 5.0]]
    assert metrics.forgetting_log_ppl(small) == pytest.approx(metrics.forgetting_log_ppl(large))
    assert metrics.forgetting(small, False) != pytest.approx(metrics.forgetting(large, False))


def test_log_perplexity_figures_skip_missing_cells() -> None:
    # experience 2 was added by a continuation: rows 0 and 1 have no value for it
    m = [[10.0, 20.0, None], [12.0, 8.0, None], [30.0, 16.0, 5.0]]
    # j=0: log 30 - log 10 = log 3; j=1: log 16 - log 8 = log 2; mean = log 6 / 2
    assert metrics.forgetting_log_ppl_per_experience(m) == pytest.approx([math.log(3.0), math.log(2.0)])
    assert metrics.forgetting_log_ppl(m) == pytest.approx(math.log(6.0) / 2)
    # a missing final cell gives None for that experience only; the mean is over the rest
    m = [[10.0, 20.0, 1.0], [12.0, 8.0, 1.0], [None, 16.0, 5.0]]
    assert metrics.forgetting_log_ppl_per_experience(m) == [None, pytest.approx(math.log(2.0))]
    assert metrics.forgetting_log_ppl(m) == pytest.approx(math.log(2.0))
    s = metrics.perplexity_summary(m)
    assert s["final_mean_perplexity"] == pytest.approx((16 + 5) / 2)
    assert s["final_mean_log_perplexity"] == pytest.approx((math.log(16) + math.log(5)) / 2)
    # NaN or a value <= 0 is no perplexity: left out like a missing cell
    m = [[float("nan"), 3.0], [20.0, 4.0]]
    assert metrics.forgetting_log_ppl_per_experience(m) == [None]
    assert metrics.forgetting_log_ppl(m) is None
    assert metrics.perplexity_summary([[0.0, 3.0], [20.0, 4.0]])["forgetting_log_ppl"] is None
    assert metrics.perplexity_summary([[None, None], [None, None]]) == {
        "forgetting_log_ppl": None,
        "forgetting_log_ppl_per_experience": [None],
        "final_mean_perplexity": None,
        "final_mean_log_perplexity": None,
    }


def test_log_perplexity_figures_of_a_single_experience() -> None:
    assert metrics.forgetting_log_ppl_per_experience([[12.0]]) == []
    assert metrics.forgetting_log_ppl([[12.0]]) == 0.0  # nothing to forget, as `forgetting`
    s = metrics.perplexity_summary([[12.0]])
    assert s["final_mean_perplexity"] == pytest.approx(12.0)
    assert s["final_mean_log_perplexity"] == pytest.approx(math.log(12.0))


def test_summary_adds_log_perplexity_keys_for_perplexity_only() -> None:
    # the learner's call: the direction alone (perplexity is the only lower-is-better metric)
    s = metrics.summary(PL, [100.0, 100.0, 100.0], False, True)
    assert set(s) == {"acc", "bwt", "fwt", "forgetting", "plasticity"} | LOG_PPL_KEYS
    assert s["forgetting_log_ppl"] == pytest.approx(math.log(5.0) / 2)
    assert s["final_mean_perplexity"] == pytest.approx(s["acc"]) == pytest.approx(22.0)
    # every existing key keeps its meaning: forgetting stays in raw perplexity
    #   j=0: -(min(10, 20) - 40) = 30; j=1: -(12 - 15) = 3 -> 16.5
    assert s["forgetting"] == pytest.approx(16.5)
    assert set(metrics.summary(PL, metric="perplexity")) >= LOG_PPL_KEYS
    # accuracy summaries are unchanged
    assert not LOG_PPL_KEYS & set(metrics.summary(R3, B3))
    assert not LOG_PPL_KEYS & set(metrics.summary(R3, B3, metric="accuracy"))
