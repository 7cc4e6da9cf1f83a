"""Fixtures several test modules share."""

import os

import pytest
import torch
from test_trainer import TINY, compose_config

from emanet.engine.train import train

# What a fresh process (a test's subprocess) runs with.
DEFAULT_THREADS = torch.get_num_threads()


def pytest_configure(config):
    """No label-check cache under the home folder: tests write only under their temporary
    folders (tests/test_label_check.py points the cache at one to test it); set before any
    fixture trains, and inherited by the tests' subprocesses."""
    os.environ["EMANET_LABEL_CHECK_CACHE"] = "off"


@pytest.fixture(autouse=True)
def default_thread_count():
    """Code under test may set torch's thread count for the whole process (runtime.threads,
    the benchmarks' one core); the next test starts from the default again, since runs in
    this process are compared bit for bit with runs in subprocesses, and a sum over other
    threads rounds differently."""
    yield
    torch.set_num_threads(DEFAULT_THREADS)


@pytest.fixture(autouse=True)
def fresh_compiler_state():
    """torch.compile remembers the input sizes each piece of code was compiled for, and
    compiles it for symbolic sizes once it has seen two: a test that compiles after another
    one compiled the same network at another size would test that, not a fresh training."""
    yield
    torch._dynamo.reset()


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
