"""emanet.engine.runtime: data loaders take no more worker processes than the cores this
process may use."""

import logging
import os

import pytest
from helpers import TINY, compose_config

from emanet.engine import runtime
from emanet.engine.distributed import SeededSampler, World


def test_loader_workers_are_never_more_than_the_usable_cores_and_a_clamp_is_logged_once(
    data_root, monkeypatch, caplog
):
    monkeypatch.setattr(runtime, "usable_cores", lambda: 2)
    runtime.note_fewer_workers.cache_clear()  # another test may have logged it in this process
    dataset = list(range(8))
    sampler = SeededSampler(dataset, World(), 0)
    cfg = compose_config([*TINY, f"data_root={data_root}", "runtime.num_workers=4"])
    with caplog.at_level(logging.INFO, logger=runtime.log.name):
        trains = [runtime.build_train_loader(dataset, 2, workers, sampler, 0) for workers in (4, 3, 2, 0)]
        evaluation = runtime.build_eval_loader(cfg)
    assert [loader.num_workers for loader in trains] == [2, 2, 2, 0]
    assert evaluation.num_workers == 2
    assert [loader.persistent_workers for loader in trains] == [True, True, True, False]
    clamps = [message for message in caplog.messages if "runtime.num_workers" in message]
    assert clamps == [
        "runtime.num_workers=4 but this process may use 2 cores: 2 data-loading workers",
        "runtime.num_workers=3 but this process may use 2 cores: 2 data-loading workers",
    ]


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="no CPU affinity here (macOS, Windows)")
def test_the_usable_cores_are_the_process_affinity(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3})  # e.g. taskset -c 3
    assert runtime.usable_cores() == 1
