"""Replay by token share composes with LoRA, L2 and LwF and with every schedule on a Hugging Face causal LM,
and the whole continual pre-training recipe (adapters on a frozen base, replay from the stream, an infinite
schedule continuing from the hot weights, gradient accumulation) resumes bit-identically after a kill."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from lifelong.datasets.base import TextCorpus
from lifelong.learner import Learner
from lifelong.methods import L2, Context, LoRA, LwF, Method, Replay
from lifelong.streams.experience import Stream
from lifelong.streams.text import text_domains

transformers = pytest.importorskip("transformers")
pytest.importorskip("peft")
from lifelong.lm.causal_lm import CausalLM  # noqa: E402  (needs transformers)


def llama(seed: int = 0) -> CausalLM:
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        vocab_size=256,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=True,
    )
    return CausalLM(transformers.LlamaForCausalLM(config))


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Any:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def text() -> Stream:
    corpus = TextCorpus(
        "toy",
        {
            "law": ["The court held that the contract was void and the appeal failed. " * 12],
            "cook": ["Whisk two eggs with sugar, fold in the flour and bake for an hour. " * 12],
            "sea": ["The ship sailed north past the cold islands before the storm. " * 12],
        },
    )
    return text_domains(corpus, block_size=32, max_blocks_per_domain=16)


class Rows(Method):
    """Records the experience each training row comes from (by matching it to the stream's blocks)."""

    name = "rows"

    def __init__(self, stream: Stream) -> None:
        self.owner = {tuple(x.tolist()): e.id for e in stream for x in e.train.x}
        self.seen: list[tuple[int, list[int]]] = []

    def batch(self, ctx: Context, batch: Any) -> Any:
        self.seen.append((ctx.index, [self.owner[tuple(x.tolist())] for x in batch.x]))
        return batch


SCHEDULES: dict[str, dict[str, Any]] = {
    "cosine": {"scheduler": "cosine", "warmup_steps": 1, "min_lr": 1e-4},
    "constant": {"scheduler": "constant"},
    "continue": {"scheduler": "continue", "min_lr": 1e-4},
    "wsd-hot": {"scheduler": "wsd", "cooldown": 0.5, "continue_from": "hot", "min_lr": 1e-4},
}
PARTNERS = {
    "lora": lambda: LoRA(rank=4, merge=False, train_head=False),
    "l2": lambda: L2(strength=1.0),
    "lwf": lambda: LwF(),
}


@pytest.mark.parametrize("schedule", list(SCHEDULES))
@pytest.mark.parametrize("partner", list(PARTNERS))
def test_replay_by_share_composes(partner: str, schedule: str, text: Stream):
    rows = Rows(text)
    methods = [PARTNERS[partner](), Replay(ratio=0.25, source="stream"), rows]
    options = {"epochs": 1, "batch_size": 8, "lr": 1e-2, "optimizer": "adamw", **SCHEDULES[schedule]}
    results = Learner(llama(), methods, progress=False, **options).run(text)
    values = torch.tensor(results.matrix)
    assert values.shape == (3, 3) and bool(torch.isfinite(values).all())
    replayed = [(i, owner) for i, owners in rows.seen for owner in owners if owner != i]
    assert replayed and all(owner < i for i, owner in replayed)  # only earlier experiences come back
    later = sum(len(owners) for i, owners in rows.seen if i > 0)
    assert len(replayed) == round(0.25 * later)  # the share, exactly, over the run
    assert all(len(owners) == 8 for _, owners in rows.seen)  # replacing, not adding


class KillAt(Method):
    name = "kill"

    def __init__(self, step: int) -> None:
        self.step = step

    def batch(self, ctx: Context, batch: Any) -> Any:
        if ctx.step == self.step:
            raise KeyboardInterrupt
        return batch


def test_the_recipe_killed_and_resumed_equals_never_killed(text: Stream, tmp_path: Path):
    def methods() -> list[Method]:
        return [LoRA(rank=4, merge=False, train_head=False), Replay(ratio=0.25, source="stream")]

    train = {
        "epochs": 1,
        "batch_size": 4,
        "grad_accum": 2,
        "lr": 1e-2,
        "optimizer": "adamw",
        "scheduler": "wsd",
        "cooldown": 0.5,
        "continue_from": "hot",
        "min_lr": 1e-3,
        "checkpoint_every": 3,
    }
    unbroken = llama()
    reference = Learner(unbroken, methods(), progress=False, **train).run(text)
    # 2 steps per experience: a checkpoint at step 3 (in experience 2, before its cool-down); the kill comes
    # in the next step, the first of its cool-down
    with pytest.raises(KeyboardInterrupt):
        Learner(llama(), [*methods(), KillAt(3)], run_dir=tmp_path / "r", progress=False, **train).run(text)
    checkpoint = tmp_path / "r" / "checkpoints"
    stored = next(checkpoint.glob("step-*")) / "model.safetensors"
    from safetensors.torch import load_file

    assert all("lora_" in key for key in load_file(stored))  # the adapters only; the base by its hash
    hot = next(stored.parent.glob("method-*-wsd_hot_weights.safetensors"))
    assert all("lora_" in key for key in load_file(hot))  # the hot copy too: never the frozen base
    # the kill method is part of the checkpoint's method list: resume with a no-op of the same name
    model = llama()
    resumed = Learner(
        model, [*methods(), KillAt(-1)], run_dir=tmp_path / "r", progress=False, **train
    ).run(text, resume=True)
    assert resumed.matrix == reference.matrix
    a, b = unbroken.state_dict(), model.state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
