"""One training run per run directory: a second is refused, naming the first."""

import socket
import subprocess
import sys

import pytest
from helpers import HOLD_LOCK, TINY, compose_config

from emanet.engine.checkpoint import load_checkpoint
from emanet.engine.train import train
from emanet.errors import RunDirectoryInUseError


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return tmp_path_factory.mktemp("data")


# Another run's lock: an flock on the lock file, with its holder noted in it.
@pytest.mark.slow
def test_a_second_run_in_a_locked_run_directory_is_refused_naming_the_holder(data_root, tmp_path):
    overrides = [*TINY, f"data_root={data_root}", "schedule.iterations=1"]
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(tmp_path / "train.lock")], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(RunDirectoryInUseError) as raised:
            train(compose_config(overrides), tmp_path)
        assert str(raised.value) == (
            f"run directory {tmp_path} is in use by another training run (pid {holder.pid} on host "
            f"{socket.gethostname()}, per train.lock): wait for it to end, or pass another hydra.run.dir"
        )
        assert not (tmp_path / "config.yaml").exists()
    finally:
        holder.kill()  # a killed holder leaves no stale lock
        holder.wait()
    train(compose_config(overrides), tmp_path)
    train(compose_config(overrides), tmp_path)  # the lock was let go when train() returned
    assert load_checkpoint(tmp_path)["iteration"] == 1
