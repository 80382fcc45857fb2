"""Unlearning: delete training data from a model, exactly or approximately, and audit the result.

- `ShardedRun` (exact): shards trained slice by slice; deleting samples retrains only the shards that saw
  them, from their state before those samples arrived. The result equals training without them.
- `unlearn` (approximate): NegGrad+ or SCRUB on one model, in place, in a fraction of a retraining's time.
- `audit`: forget / retain / test accuracy and a membership-inference attack's AUC on the forget set.

See docs/unlearning.md.
"""

from __future__ import annotations

from lifelong.unlearn.approximate import unlearn
from lifelong.unlearn.audit import audit, rank_auc
from lifelong.unlearn.sharded import ShardedRun, shard_of

__all__ = ["ShardedRun", "audit", "rank_auc", "shard_of", "unlearn"]
