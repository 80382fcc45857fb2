"""The promotion gate: a candidate replaces the promoted version only if, on every evaluation set the
promoted version was tracked on, its metric does not drop beyond a tolerance, and few of the samples the
promoted version got right are now wrong (its negative flip rate against the promoted version).

Tolerance: accuracy may drop by at most `tolerance` (absolute: 0.01 is one point); perplexity may rise by
at most `tolerance` (relative: 0.01 is 1 %). Negative flips are counted on the promoted version's own
evaluation sets (the samples its users relied on): per sample for classifiers, per token (top-1 next
token) for language models.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from lifelong.errors import ConfigError

if TYPE_CHECKING:  # torch stays out of `lifelong store list`: the command line must start fast
    import torch

    from lifelong.streams.experience import Split, Stream


@dataclass(frozen=True)
class GatePolicy:
    tolerance: float = 0.01
    max_negative_flip_rate: float = 0.05

    def __post_init__(self) -> None:
        if not 0.0 <= self.tolerance <= 1.0:
            raise ConfigError(f"gate tolerance must lie in [0, 1], got {self.tolerance}")
        if not 0.0 <= self.max_negative_flip_rate <= 1.0:
            raise ConfigError(
                f"the gate's maximum negative flip rate must lie in [0, 1], got {self.max_negative_flip_rate}"
            )


def _predict(trained: Any, split: Split) -> torch.Tensor:
    """Top-1 predictions of a loaded version (`lifelong.load`) on `split`: classes, or next tokens."""
    if trained.kind == "classification":
        return trained.predict(split.x, task=split.t).cpu()
    from lifelong.evaluation.flips import predictions

    return predictions(trained.model, split, kind="language_modeling")


def targets(kind: str, split: Split) -> torch.Tensor:
    """What the predictions are scored against: labels, or every next token."""
    return split.y.reshape(-1) if kind == "language_modeling" else split.y


def decide(
    parent_metrics: dict[str, Any],
    candidate_metrics: dict[str, Any],
    parent_trained: Any,
    candidate_trained: Any,
    stream: Stream,
    policy: GatePolicy,
    label_names: list[Any] | None = None,
) -> dict[str, Any]:
    """The gate's verdict with its evidence: per tracked set the two metrics, the negative flips (rate,
    per class, examples), and why it passed or failed."""
    import torch

    from lifelong.evaluation.flips import flip_report

    higher = parent_metrics["higher_is_better"]
    old_sets = parent_metrics["tracked"]
    rows, failures = [], []
    final = candidate_metrics["tracked"]
    for tracked in old_sets:
        i = tracked["experience"]
        before, after = tracked["value"], final[i]["value"]
        if before is None or after is None:
            continue
        if higher:
            change = after - before
            ok = change >= -policy.tolerance
        else:
            change = after / before - 1.0
            ok = change <= policy.tolerance
        rows.append({"experience": i, "name": tracked["name"], "promoted": before, "candidate": after,
                     "change": change, "ok": ok})  # fmt: skip
        if not ok:
            what = "accuracy" if higher else "perplexity"
            failures.append(
                f"{what} on {tracked['name']!r} went from {before:.4g} to {after:.4g} "
                f"({change:+.2%}{'' if higher else ' relative'}, tolerance {policy.tolerance:.2%})"
            )
    new_sets = [
        {"experience": t["experience"], "name": t["name"], "candidate": t["value"]}
        for t in final[len(old_sets) :]
    ]
    kind = stream.kind
    splits = [stream[t["experience"]].test for t in old_sets]
    old_pred = torch.cat([_predict(parent_trained, s) for s in splits])
    new_pred = torch.cat([_predict(candidate_trained, s) for s in splits])
    y = torch.cat([targets(kind, s) for s in splits])
    flips = flip_report(old_pred, new_pred, y, label_names=label_names if kind == "classification" else None)
    nfr = flips["negative_flip_rate"]
    if nfr > policy.max_negative_flip_rate:
        unit = "samples" if kind == "classification" else "tokens"
        failures.append(
            f"negative flip rate {nfr:.2%} is above {policy.max_negative_flip_rate:.2%}: "
            f"{flips['negative_flips']} of {flips['samples']} {unit} the promoted version got right are wrong"
        )
    passed = not failures
    return {
        "passed": passed,
        "reason": "; ".join(failures)
        if failures
        else "no tracked metric dropped beyond the tolerance and "
        f"the negative flip rate {nfr:.2%} is within {policy.max_negative_flip_rate:.2%}",
        "policy": asdict(policy),
        "negative_flip_rate": nfr,
        "flips": flips,
        "tracked": rows,
        "new": new_sets,
    }
