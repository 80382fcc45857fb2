"""Negative flips between two model versions: predictions made exactly as evaluation makes them (task masking,
language models' tokens, Hugging Face outputs, the model's mode left as it was), and the flip report's
counts, rates, per-class table and examples."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from lifelong import datasets
from lifelong.errors import ConfigError, DataError
from lifelong.evaluation.confusion import confusion_matrix
from lifelong.evaluation.flips import flip_report, predictions
from lifelong.models import MLP, TinyGPT
from lifelong.objectives import objective_for
from lifelong.streams import class_incremental, task_incremental
from lifelong.streams.experience import Split

# --- the report ---------------------------------------------------------------------------------------------

OLD = torch.tensor([0, 1, 2, 2, 1, 0, 3, 3])
NEW = torch.tensor([0, 2, 2, 1, 1, 1, 3, 0])
Y = torch.tensor([0, 1, 2, 1, 0, 0, 3, 3])
# index: 0 right/right, 1 right->wrong, 2 right/right, 3 wrong->right, 4 wrong/wrong, 5 right->wrong,
# 6 right/right, 7 right->wrong


def test_rates_counts_and_accuracies():
    r = flip_report(OLD, NEW, Y)
    assert r["samples"] == 8
    assert r["negative_flips"] == 3 and r["negative_flip_rate"] == 3 / 8
    assert r["positive_flips"] == 1 and r["positive_flip_rate"] == 1 / 8
    assert r["old_accuracy"] == 6 / 8 and r["new_accuracy"] == 4 / 8
    # new accuracy = old accuracy - negative flips + positive flips
    change = r["positive_flip_rate"] - r["negative_flip_rate"]
    assert r["new_accuracy"] == pytest.approx(r["old_accuracy"] + change)
    assert json.loads(json.dumps(r)) == r  # JSON-ready


def test_per_class_lists_present_classes_by_flips_then_class():
    names = ["tee", "trouser", "pullover", "dress", "coat"]
    r = flip_report(OLD, NEW, Y, label_names=names)
    # class 0: samples 0,4,5 (flip at 5); class 1: 1,3 (flip at 1); class 2: 2; class 3: 6,7 (flip at 7)
    assert r["per_class"] == [
        {"class": 0, "name": "tee", "samples": 3, "negative_flips": 1, "rate": 1 / 3},
        {"class": 1, "name": "trouser", "samples": 2, "negative_flips": 1, "rate": 1 / 2},
        {"class": 3, "name": "dress", "samples": 2, "negative_flips": 1, "rate": 1 / 2},
        {"class": 2, "name": "pullover", "samples": 1, "negative_flips": 0, "rate": 0.0},
    ]  # class 4 has no sample: not listed
    assert [c["class"] for c in flip_report(OLD, NEW, Y, max_classes=2)["per_class"]] == [0, 1]
    assert all(c["name"] is None for c in flip_report(OLD, NEW, Y)["per_class"])


def test_examples_are_the_first_negative_flips_in_index_order():
    r = flip_report(OLD, NEW, Y, examples=2)
    assert r["examples"] == [
        {"index": 1, "label": 1, "old": 1, "new": 2},
        {"index": 5, "label": 0, "old": 0, "new": 1},
    ]
    assert len(flip_report(OLD, NEW, Y)["examples"]) == 3
    assert flip_report(OLD, NEW, Y, examples=0)["examples"] == []


def test_no_flips_between_identical_versions_and_lists_are_accepted():
    r = flip_report([1, 2, 3], [1, 2, 3], [1, 0, 3])
    assert r["negative_flip_rate"] == r["positive_flip_rate"] == 0.0 and r["examples"] == []
    # token predictions of a language model: any shape, flattened alike
    r = flip_report(OLD.view(2, 4), NEW.view(2, 4), Y.view(2, 4))
    assert r["negative_flips"] == 3 and r["examples"][0]["index"] == 1


@pytest.mark.parametrize(
    "args, match",
    [
        ((OLD, NEW[:-1], Y), "old_pred has 8 entries, new_pred 7 and y 8"),
        ((OLD, NEW, Y[:5]), "y 5"),
        ((OLD[:0], NEW[:0], Y[:0]), "no samples"),
        ((OLD.float(), NEW, Y), "class ids"),
        ((OLD, NEW, Y - 1), "labels must be class ids >= 0"),
    ],
)
def test_bad_input_is_refused_with_the_fix(args, match):
    with pytest.raises(DataError, match=match):
        flip_report(*args)


def test_bad_options_are_refused():
    with pytest.raises(ConfigError):
        flip_report(OLD, NEW, Y, examples=-1)
    with pytest.raises(ConfigError):
        predictions(nn.Linear(2, 2), Split(torch.zeros(1, 2), torch.zeros(1)), kind="regression")


# --- predictions --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits():
    return datasets.load("digits")


def test_classifier_predictions_score_exactly_as_evaluation(digits):
    stream = class_incremental(digits, 2)
    torch.manual_seed(0)
    model = MLP(stream.input_shape, stream.num_classes, [16])
    split = stream.test_sets[0]
    pred = predictions(model, split, batch_size=7)
    assert pred.dtype == torch.long and pred.shape == (len(split),)
    assert torch.equal(pred, predictions(model, split))  # the batch size changes nothing
    accuracy = float((pred == split.y).float().mean())
    assert accuracy == pytest.approx(objective_for(stream).evaluate(model, split))
    assert flip_report(pred, pred, split.y)["old_accuracy"] == pytest.approx(accuracy)


@pytest.mark.parametrize("training", [True, False])
def test_the_model_keeps_its_mode_and_no_gradient_is_taken(digits, training):
    stream = class_incremental(digits, 2)
    model = nn.Sequential(MLP(stream.input_shape, stream.num_classes, [16]), nn.Dropout(0.5))
    model.train(training)
    a = predictions(model, stream.test_sets[0])
    b = predictions(model, stream.test_sets[0])
    assert torch.equal(a, b)  # eval mode inside: dropout off, the same predictions twice
    assert model.training == training
    assert all(p.grad is None for p in model.parameters())


def test_task_incremental_predictions_are_masked_to_each_samples_task(digits):
    stream = task_incremental(digits, 3)
    torch.manual_seed(0)
    model = MLP(stream.input_shape, stream.num_classes, [16])
    objective = objective_for(stream)
    split = stream.test_sets[1]
    pred = predictions(model, split, objective=objective)
    assert set(pred.tolist()) <= set(stream.task_classes[1])  # type: ignore[index]
    counts = confusion_matrix(objective, model, split, stream.num_classes)
    assert int((pred == split.y).sum()) == int(counts.diagonal().sum())  # as evaluation counts them
    unmasked = predictions(model, split)  # the raw head: any class
    assert not set(unmasked.tolist()) <= set(stream.task_classes[1])  # type: ignore[index]


def test_language_model_predictions_are_the_top_token_at_every_position():
    torch.manual_seed(0)
    gpt = TinyGPT(32, 8, n_layer=1, n_head=2, n_embd=16)
    x = torch.randint(0, 32, (5, 8))
    split = Split(x, torch.roll(x, -1, dims=1))
    pred = predictions(gpt, split, "language_modeling", batch_size=2)
    with torch.no_grad():
        expected = gpt.eval()(x).argmax(dim=-1).flatten()
    assert torch.equal(pred, expected) and pred.shape == (5 * 8,)
    r = flip_report(pred, pred, split.y)
    assert r["samples"] == 40  # one per token position
    with pytest.raises(DataError, match="kind='language_modeling'"):
        predictions(gpt, split)  # [B, T, V] outputs are not one class per sample


def test_models_returning_dicts_or_hugging_face_outputs_are_read_for_their_logits():
    pytest.importorskip("transformers")
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=40, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=16,
    )  # fmt: skip
    torch.manual_seed(0)
    hf = LlamaForCausalLM(config)  # returns a ModelOutput with .logits
    x = torch.randint(0, 40, (3, 6))
    pred = predictions(hf, Split(x, x), "language_modeling")
    with torch.no_grad():
        assert torch.equal(pred, hf(x).logits.argmax(dim=-1).flatten())

    class DictModel(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = nn.Linear(4, 3)

        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"logits": self.linear(x)}

    model = DictModel()
    features = torch.randn(6, 4)
    with torch.no_grad():
        expected = model.linear(features).argmax(dim=1)
    assert torch.equal(predictions(model, Split(features, torch.zeros(6, dtype=torch.long))), expected)
