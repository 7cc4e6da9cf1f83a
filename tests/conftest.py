"""Fixtures several test modules share."""

import pytest
from test_trainer import TINY, compose_config

from emanet.engine.train import train


@pytest.fixture(scope="session")
def data_root(tmp_path_factory):
    """The demo dataset at the size of TINY, generated once."""
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="session")
def full_run(data_root, tmp_path_factory):
    """One uninterrupted TINY training run: the reference that interrupted, damaged and
    signalled runs are compared with (tests copy from it, never change it)."""
    run_dir = tmp_path_factory.mktemp("full")
    train(compose_config([*TINY, f"data_root={data_root}"]), run_dir)
    return run_dir
