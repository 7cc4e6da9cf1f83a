"""Fixtures several test modules share."""

import os

import pytest
import torch
from helpers import TINY, compose_config

from emanet.data.demo import generate_demo_dataset
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
    """A data_root holding the demo dataset at the size of TINY (demo/VOC2012), generated
    once. Tests read it; a test that damages data copies it first."""
    root = tmp_path_factory.mktemp("data")
    dataset = compose_config([*TINY, f"data_root={root}"]).dataset
    generate_demo_dataset(dataset.root, **dataset.generate)
    return root


@pytest.fixture(scope="session")
def full_run(data_root, tmp_path_factory):
    """The test session's one demo training, TINY to the end, uninterrupted: the run that
    evaluations, predictions and interrupted, damaged or signalled runs are compared with.
    Tests only read it; a test that changes a run copies it first."""
    run_dir = tmp_path_factory.mktemp("full_run")
    train(compose_config([*TINY, f"data_root={data_root}"]), run_dir)
    return run_dir
