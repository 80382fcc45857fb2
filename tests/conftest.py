"""Shared test set-up."""

from __future__ import annotations

import os

import torch

# no test may reach a model hub: fail fast instead of hanging
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

if os.environ.get("PYTEST_XDIST_WORKER"):
    # two pytest workers on two cores: one torch thread each, or they fight over the cores
    torch.set_num_threads(1)


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def postgres():
    """A PostgreSQL server of this test session (see tests/postgres_server.py)."""
    from postgres_server import PostgresServer

    try:
        server = PostgresServer()
    except FileNotFoundError as e:
        if os.environ.get("LIFELONG_REQUIRE_POSTGRES"):
            raise
        pytest.skip(str(e))
    yield server
    server.stop()
