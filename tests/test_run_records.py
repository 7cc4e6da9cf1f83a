"""A run's records are never overwritten or silently wrong: evaluations and predictions
pointed at a training run write beside its records, start from its config, and metrics.json
reports the weights it scored."""

import errno
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from datetime import datetime
from pathlib import Path

import pytest
from helpers import HOLD_LOCK, TINY, run_entry_point
from omegaconf import OmegaConf
from PIL import Image

from emanet.cli import compose_config, start_from_training_run
from emanet.engine.checkpoint import load_checkpoint
from emanet.engine.evaluate import evaluate_checkpoint
from emanet.engine.run_directory import check_writable, own_run_dir, refuse_if_in_use
from emanet.engine.train import train
from emanet.errors import ConfigError, RunDirectoryInUseError


def records(run_dir: Path) -> dict[str, bytes]:
    """Every file a training run left, by its path inside the run."""
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted(run_dir.rglob("*")) if p.is_file()}


@pytest.fixture
def trained_run(full_run, data_root, tmp_path):
    """A copy of the TINY training run (trained with num_train=10, num_val=2), with the
    record of its overrides that train.py's Hydra would have written."""
    run_dir = tmp_path / "trained"
    shutil.copytree(full_run, run_dir, symlinks=True)
    (run_dir / ".hydra").mkdir()
    OmegaConf.save(OmegaConf.create([*TINY, f"data_root={data_root}"]), run_dir / ".hydra" / "overrides.yaml")
    return run_dir


@pytest.mark.slow
def test_evaluate_and_predict_into_a_training_run_write_folders_of_their_own(trained_run, tmp_path):
    before = records(trained_run)
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.new("RGB", (40, 30), (200, 40, 40)).save(photos / "a.jpg")
    evaluated = run_entry_point("evaluate.py", f"checkpoint={trained_run}", f"hydra.run.dir={trained_run}",
                                "runtime.progress=false", cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr
    predicted = run_entry_point("scripts/predict.py", f"checkpoint={trained_run}", f"input={photos}", "eval=ss",
                                f"hydra.run.dir={trained_run}", "runtime.progress=false", cwd=tmp_path)
    assert predicted.returncode == 0, predicted.stderr
    after = records(trained_run)
    # Every record of the training run, Hydra's among them, is as it was.
    assert {name: after[name] for name in before} == before
    (evaluation,) = (trained_run / "eval").iterdir()
    (prediction,) = (trained_run / "predict").iterdir()
    assert datetime.strptime(evaluation.name, "%Y-%m-%d_%H-%M-%S")
    metrics = json.loads((evaluation / "metrics.json").read_text())
    assert metrics["iteration"] == 6 and "train_seconds" not in metrics
    assert json.loads((prediction / "predictions.json").read_text())["images"] == {"a": str(photos / "a.jpg")}
    assert f"{trained_run} holds a training run's records, which this evaluation leaves alone: it writes into " \
           f"{evaluation}" in evaluated.stdout + evaluated.stderr
    # A second evaluation into the first one's finished folder leaves it alone too.
    first_metrics = (evaluation / "metrics.json").read_bytes()
    again = run_entry_point("evaluate.py", f"checkpoint={trained_run}", f"hydra.run.dir={evaluation}",
                            "runtime.progress=false", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert (evaluation / "metrics.json").read_bytes() == first_metrics
    assert len(list((evaluation / "eval").iterdir())) == 1


def test_an_evaluation_writes_where_it_is_told_unless_that_holds_records(tmp_path):
    now = datetime(2026, 1, 2, 3, 4, 5)
    assert own_run_dir(tmp_path / "new", "evaluate", now) == (tmp_path / "new", None)
    assert own_run_dir(tmp_path, "evaluate", now) == (tmp_path, None)  # empty
    (tmp_path / "config.yaml").write_text("mine: 1\n")  # a file of that name, whoever wrote it
    assert own_run_dir(tmp_path, "evaluate", now) == (
        tmp_path / "eval" / "2026-01-02_03-04-05",
        f"{tmp_path} holds config.yaml, which this evaluation leaves alone: it writes into "
        f"{tmp_path / 'eval' / '2026-01-02_03-04-05'}",
    )
    assert own_run_dir(tmp_path, "predict", now)[0] == tmp_path / "predict" / "2026-01-02_03-04-05"
    assert own_run_dir(tmp_path, "train", now) == (tmp_path, None)  # training resumes where it is told


def test_a_second_evaluation_into_a_directory_in_use_is_refused_naming_the_first(tmp_path, full_run, data_root):
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(tmp_path / "evaluate.lock")],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        message = (
            f"run directory {tmp_path} is in use by another evaluation (pid {holder.pid} on host "
            f"{socket.gethostname()}, per evaluate.lock): wait for it to end, or pass another hydra.run.dir"
        )
        with pytest.raises(RunDirectoryInUseError) as raised:
            refuse_if_in_use(tmp_path, "evaluate")
        assert str(raised.value) == message
        cfg = compose_config("evaluate", [*TINY, f"data_root={data_root}", f"checkpoint={full_run}"])
        with pytest.raises(RunDirectoryInUseError) as raised:
            evaluate_checkpoint(cfg, tmp_path)
        assert str(raised.value) == message
        assert not (tmp_path / "metrics.json").exists()
    finally:
        holder.kill()
        holder.wait()
    refuse_if_in_use(tmp_path, "evaluate")  # the holder's end let the lock go


@pytest.mark.slow
def test_an_evaluation_starts_from_the_config_of_the_run_that_wrote_the_checkpoint(trained_run, tmp_path):
    overrides = [f"checkpoint={trained_run / 'checkpoints' / 'last.pt'}", "model.ema.eval_stages=2",
                 "eval.save_predictions=true"]
    cfg = compose_config("evaluate", overrides)
    # Composed alone, the command line would score the default demo: 60 val images of a
    # dataset of 1000 training images, under ./data.
    assert (cfg.dataset.generate.num_train, cfg.dataset.generate.num_val) == (1000, 60)
    merged, note = start_from_training_run(cfg, "evaluate", overrides)
    trained = json.loads(json.dumps(load_checkpoint(trained_run)["config"]))
    assert merged.dataset.root == trained["dataset"]["root"]
    assert (merged.dataset.generate.num_train, merged.dataset.generate.num_val) == (10, 2)
    assert merged.model.ema.eval_stages == 2 and trained["model"]["ema"]["eval_stages"] == 3
    assert merged.eval.save_predictions is True and merged.checkpoint == overrides[0].partition("=")[2]
    assert note == (
        f"starting from {trained_run / 'config.yaml'}, the config of the run that wrote the checkpoint; the "
        "command line sets eval.save_predictions=True, model.ema.eval_stages=2 on top"
    )
    marker = Path(trained["dataset"]["root"]) / "demo_dataset.json"
    built = marker.read_bytes()
    metrics = evaluate_checkpoint(merged, tmp_path / "evaluation")
    assert sorted(p.name for p in (tmp_path / "evaluation" / "predictions").iterdir()) == [
        "demo_val_00000.png", "demo_val_00001.png"]
    assert metrics["eval"]["eval_stages"] == 2
    assert marker.read_bytes() == built  # the run's data, not rebuilt


@pytest.mark.slow
def test_the_runs_own_experiment_named_again_changes_nothing_and_a_preset_sets_its_keys(trained_run):
    checkpoint = f"checkpoint={trained_run}"
    same, note = start_from_training_run(compose_config("evaluate", [checkpoint, "experiment=demo"]), "evaluate",
                                         [checkpoint, "experiment=demo"])
    assert note.endswith("the command line sets nothing on top")
    assert same.dataset.generate.num_train == 10 and same.eval.scales == [1.0]
    preset, note = start_from_training_run(compose_config("evaluate", [checkpoint, "eval=ms_flip"]), "evaluate",
                                           [checkpoint, "eval=ms_flip"])
    assert list(preset.eval.scales) == [0.5, 0.75, 1.0, 1.25, 1.5, 1.75] and preset.eval.flip is True
    assert preset.dataset.generate.num_val == 2


def test_a_checkpoint_outside_a_run_directory_takes_the_command_line_as_it_is(full_run, tmp_path):
    shutil.copy(full_run / "checkpoints" / "last.pt", tmp_path / "imported.pt")
    overrides = [f"checkpoint={tmp_path / 'imported.pt'}"]
    cfg = compose_config("evaluate", overrides)
    assert start_from_training_run(cfg, "evaluate", overrides) == (cfg, None)


@pytest.mark.slow
def test_metrics_report_the_checkpoints_iteration_and_the_time_trained_over_every_invocation(data_root, tmp_path):
    overrides = [*TINY, f"data_root={data_root}"]
    train(compose_config("train", [*overrides, "schedule.iterations=4"]), tmp_path)
    first = json.loads((tmp_path / "metrics.json").read_text())
    trained = load_checkpoint(tmp_path / "checkpoints" / "iter_0000004.pt")["train_seconds"]
    # The final checkpoint's time is metrics.json's.
    assert first["iteration"] == 4 and first["train_seconds"] == round(trained, 1) and trained > 0
    # Resumed with fewer iterations than its checkpoint has: the iteration-4 weights are scored.
    train(compose_config("train", [*overrides, "schedule.iterations=2"]), tmp_path)
    again = json.loads((tmp_path / "metrics.json").read_text())
    assert again["iteration"] == 4 and again["mIoU"] == first["mIoU"]
    assert again["train_seconds"] == round(trained, 1)  # not the 0.0 of this invocation alone
    train(compose_config("train", [*overrides, "schedule.iterations=6"]), tmp_path)
    resumed = load_checkpoint(tmp_path / "checkpoints" / "iter_0000006.pt")["train_seconds"]
    assert resumed > trained
    assert json.loads((tmp_path / "metrics.json").read_text())["train_seconds"] == round(resumed, 1)


@pytest.mark.slow
def test_a_run_directory_under_a_file_is_refused_in_one_line_before_anything_is_written(full_run, tmp_path):
    (tmp_path / "notes.txt").write_text("a file, not a folder\n")
    result = run_entry_point("scripts/predict.py", f"checkpoint={full_run}", f"input={tmp_path / 'notes.txt'}",
                             f"hydra.run.dir={tmp_path / 'notes.txt' / 'run'}", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"error: cannot write the run directory {tmp_path / 'notes.txt' / 'run'} (hydra.run.dir): "
        f"{tmp_path / 'notes.txt'} is a file, not a folder; pass hydra.run.dir=<a folder you can write>"
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_a_read_only_run_directory_is_refused_naming_it(tmp_path, monkeypatch):
    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(tempfile, "TemporaryFile", read_only)
    with pytest.raises(ConfigError) as raised:
        check_writable(tmp_path / "a" / "run", "hydra.run.dir")
    assert str(raised.value) == (
        f"cannot write the run directory {tmp_path / 'a' / 'run'} (hydra.run.dir): Read-only file system; "
        "pass hydra.run.dir=<a folder you can write>"
    )
    assert list(tmp_path.iterdir()) == []  # the folders the check made are gone
