"""The confusion matrix: the counts a hand computation gives, the accuracy `Classification.evaluate` gives
(exactly, on a trained model of real data), task-incremental masking, and clear errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import lifelong
from lifelong.errors import DataError
from lifelong.evaluation.confusion import accuracy_of, confusion_matrix, per_class_accuracy
from lifelong.models import MLP
from lifelong.objectives import Classification, LanguageModeling
from lifelong.streams import class_incremental, task_incremental
from lifelong.streams.experience import Split


class Fixed(nn.Module):
    """Outputs the logits it was given for each sample (looked up by the sample's first feature)."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = nn.Parameter(logits.clone(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits[x[:, 0].long()]


def test_counts_match_a_hand_computation():
    # true: 0 0 1 1 2 2 ; predicted: 0 1 1 1 0 2  -> (0,0) (0,1) (1,1) (1,1) (2,0) (2,2)
    predicted = [0, 1, 1, 1, 0, 2]
    logits = torch.nn.functional.one_hot(torch.tensor(predicted), 4).float()
    split = Split(torch.arange(6).float().unsqueeze(1), torch.tensor([0, 0, 1, 1, 2, 2]))
    counts = confusion_matrix(Classification(4), Fixed(logits), split, num_classes=4, batch_size=4)
    expected = torch.tensor([[1, 1, 0, 0], [0, 2, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]])
    assert counts.dtype == torch.int64 and torch.equal(counts, expected)
    assert per_class_accuracy(counts) == [0.5, 1.0, 0.5, None]  # class 3 has no sample
    assert accuracy_of(counts) == 4 / 6


@pytest.fixture(scope="module")
def digits():
    return lifelong.datasets.load("digits")


def _trained_mlp(stream, steps: int = 30) -> MLP:
    torch.manual_seed(0)
    model = MLP(stream.input_shape, stream.num_classes, hidden=[32])
    objective = Classification(stream.num_classes, stream.task_classes)
    train = stream[0].train
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(steps):  # far from perfect on purpose: the matrix must have off-diagonal counts
        optimizer.zero_grad()
        objective.loss(objective.forward(model, train.x, train.t), train.y).backward()
        optimizer.step()
    return model


def test_accuracy_equals_classification_evaluate_exactly(digits):
    stream = class_incremental(digits, 2)
    model = _trained_mlp(stream)
    objective = Classification(stream.num_classes)
    model.train()
    for split in stream.test_sets:
        counts = confusion_matrix(objective, model, split, stream.num_classes, batch_size=37)
        assert int(counts.sum()) == len(split)
        assert counts.sum(dim=1).tolist() == torch.bincount(split.y, minlength=10).tolist()
        assert accuracy_of(counts) == objective.evaluate(model, split)
    first = confusion_matrix(objective, model, stream.test_sets[0], stream.num_classes)
    assert 0 < accuracy_of(first) < 1  # right and wrong predictions both counted
    assert model.training  # evaluation mode is undone, as `evaluate` does
    model.eval()
    confusion_matrix(objective, model, stream.test_sets[0], stream.num_classes)
    assert not model.training


def test_task_incremental_masking_is_respected(digits):
    stream = task_incremental(digits, 2)
    model = _trained_mlp(stream, steps=5)
    masked = Classification(stream.num_classes, stream.task_classes)
    second = stream[1].test  # task 1: classes 5..9
    counts = confusion_matrix(masked, model, second, stream.num_classes)
    assert accuracy_of(counts) == masked.evaluate(model, second)
    # with the mask no sample of task 1 is ever predicted as a class of task 0
    assert int(counts[:, :5].sum()) == 0 and int(counts[5:, 5:].sum()) == len(second)
    unmasked = confusion_matrix(Classification(stream.num_classes), model, second, stream.num_classes)
    assert int(unmasked[:, :5].sum()) > 0  # the model trained on task 0 only: unmasked, it votes 0..4


def test_spare_outputs_widen_the_matrix():
    """A model may have more outputs than the stream has classes; a prediction of a spare output is a
    mistake and gets its column, so the accuracy still equals `evaluate`'s."""
    x = torch.eye(4)[[0, 1, 3, 3, 2]]  # the identity model predicts 0, 1, 3, 3, 2
    split = Split(x, torch.tensor([0, 1, 2, 0, 2]))
    identity = nn.Linear(4, 4, bias=False)
    nn.init.eye_(identity.weight)
    counts = confusion_matrix(Classification(3), identity, split, 3, batch_size=2)
    expected = torch.zeros(4, 4, dtype=torch.int64)
    for true, predicted in [(0, 0), (1, 1), (2, 3), (0, 3), (2, 2)]:
        expected[true, predicted] += 1
    assert torch.equal(counts, expected)  # the first batch (predictions 0, 1) fitted 3 x 3: widened later
    assert accuracy_of(counts) == Classification(3).evaluate(identity, split) == 3 / 5
    assert per_class_accuracy(counts) == [0.5, 1.0, 0.5, None]


def test_no_grad_inside():
    seen = []

    class Spy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.ones(1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(torch.is_grad_enabled())
            return x * self.w

    split = Split(torch.eye(3), torch.tensor([0, 1, 2]))
    assert torch.equal(confusion_matrix(Classification(3), Spy(), split, 3), torch.eye(3, dtype=torch.int64))
    assert seen == [False]


def test_errors_name_the_problem():
    split = Split(torch.eye(3), torch.tensor([0, 1, 5]))
    with pytest.raises(DataError, match="sample 2: label 5 is outside the 3 classes 0..2"):
        confusion_matrix(Classification(3), nn.Identity(), split, 3)
    tokens = Split(torch.zeros(2, 4, dtype=torch.long), torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(DataError, match="one class label per sample"):
        confusion_matrix(LanguageModeling(8), nn.Identity(), tokens, 8)
    with pytest.raises(DataError, match="counts no sample"):
        accuracy_of(torch.zeros(3, 3, dtype=torch.int64))
    with pytest.raises(DataError, match="square"):
        per_class_accuracy(torch.zeros(2, 3, dtype=torch.int64))
