"""Naive fine-tuning: train on each experience in turn and nothing else. The lower bound."""

from __future__ import annotations

from lifelong.methods.base import Method


class Naive(Method):
    """Plain fine-tuning. It adds nothing to the loop, so a Naive run costs what the bare loop costs."""

    name = "naive"
