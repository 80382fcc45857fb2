"""Self-training: confidence scores for unlabeled samples, selection policies over them, and diagnostics of
pseudo-labels against held-back truth. The methods that use them are `lifelong.methods.pseudo_label`,
`lifelong.methods.fixmatch` and `lifelong.methods.mean_teacher`."""

from lifelong.selftrain.confidence import CONFIDENCES, HeadEnsemble, agreement, confidence_of
from lifelong.selftrain.diagnostics import class_distribution, coverage, ece, precision, reliability
from lifelong.selftrain.selection import SELECTIONS, class_balanced, flexmatch, select, threshold, top_share

__all__ = [
    "CONFIDENCES",
    "SELECTIONS",
    "HeadEnsemble",
    "agreement",
    "class_balanced",
    "class_distribution",
    "confidence_of",
    "coverage",
    "ece",
    "flexmatch",
    "precision",
    "reliability",
    "select",
    "threshold",
    "top_share",
]
