"""scripts/predict.py over a folder of someone's photos: hidden files left out, bad files
skipped and listed, predictions.json written as the run goes, a stopped run resumed."""

import json
import logging
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from helpers import QUIET, save_random_model, write_photo
from PIL import Image
from tests_paths import REPO

from emanet.cli import compose_config
from emanet.engine import predict as predict_module
from emanet.engine.predict import find_images, predict_files
from emanet.engine.segmenter import Segmenter
from emanet.errors import ConfigError, DatasetError, PredictionStopped

APPLEDOUBLE = b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        " + bytes(64)  # a macOS ._ sidecar's header


@pytest.fixture
def checkpoint(tmp_path):
    path = tmp_path / "model.pt"
    save_random_model(path)
    return path


def outputs(run_dir, folder="predictions"):
    """The ids of the outputs in ``run_dir/folder``."""
    top = run_dir / folder
    return {path.relative_to(top).with_suffix("").as_posix() for path in top.rglob("*") if path.is_file()}


def truncated_jpeg(path, seed):
    write_photo(path, 40, 50, seed=seed)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # the header (and so the size) intact, the pixels cut


def count_segmented_images(monkeypatch):
    """The number of images in each batch the model is run on."""
    segmented, real = [], Segmenter.predict_classes

    def counting(segmenter, images, *args, **kwargs):
        segmented.append(len(images))
        return real(segmenter, images, *args, **kwargs)

    monkeypatch.setattr(Segmenter, "predict_classes", counting)
    return segmented


def test_hidden_files_and_folders_are_left_out_of_a_folder_but_not_when_named(tmp_path):
    write_photo(tmp_path / "photos" / "a.jpg", 8, 8, seed=0)
    write_photo(tmp_path / "photos" / ".thumbs" / "a_small.jpg", 4, 4, seed=0)
    write_photo(tmp_path / "photos" / "sub" / ".hidden.png", 4, 4, seed=0)
    (tmp_path / "photos" / "._a.jpg").write_bytes(APPLEDOUBLE)

    assert find_images([str(tmp_path / "photos")]) == {"a": tmp_path / "photos" / "a.jpg"}
    hidden = tmp_path / "photos" / ".thumbs" / "a_small.jpg"
    assert find_images([str(hidden)]) == {"a_small": hidden}  # asked for by name
    (tmp_path / "photos" / "a.jpg").unlink()
    with pytest.raises(ConfigError, match=r"holds no image files .*hidden files and folders"):
        find_images([str(tmp_path / "photos")])


@pytest.mark.slow
def test_bad_files_are_skipped_named_and_listed_while_workers_load_batches(tmp_path, checkpoint, caplog):
    photos = tmp_path / "photos"
    for name in ("a.png", "b.png", "c.jpg", "e.png"):
        write_photo(photos / name, 40, 50, seed=len(name) + ord(name[0]))
    write_photo(photos / "sub" / "d.png", 30, 20, seed=9)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 50 wide like e.png, in its batch, but upright 40 wide
    Image.fromarray(np.random.default_rng(5).integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(
        photos / "f.jpg", exif=exif
    )
    truncated_jpeg(photos / "broken.jpg", seed=6)  # batched with c.jpg: its size is read from the header
    (photos / "empty.jpg").write_bytes(b"")
    (photos / "._a.jpg").write_bytes(APPLEDOUBLE)
    write_photo(photos / ".thumbs" / "a.jpg", 40, 50, seed=7)
    run_dir = tmp_path / "run"
    cfg = compose_config("predict", [
        f"checkpoint={checkpoint}", f"input={photos}", *QUIET, "runtime.num_workers=2", "eval.batch_size=2",
    ])

    with caplog.at_level(logging.INFO, logger="emanet"):
        summary = predict_files(cfg, run_dir)

    good = {"a", "b", "c", "e", "f", "sub/d"}
    assert outputs(run_dir) == outputs(run_dir, "overlays") == good
    assert set(summary["images"]) == set(summary["working_sizes"]) == good
    assert summary["working_sizes"]["f"] == [50, 40] and summary["working_sizes"]["e"] == [40, 50]
    assert set(summary["skipped"]) == {"broken", "empty"}
    assert summary["skipped"]["broken"]["file"] == str(photos / "broken.jpg")
    assert summary["skipped"]["broken"]["reason"].startswith("cannot decode the image (image file is truncated")
    assert summary["skipped"]["empty"]["reason"].startswith("cannot decode the image (cannot identify image file")
    assert summary["finished"] is True and summary["remaining"] == 0
    assert json.loads((run_dir / "predictions.json").read_text()) == summary
    messages = [record.getMessage() for record in caplog.records]
    for sample_id in ("broken", "empty"):
        skipped = summary["skipped"][sample_id]
        assert messages.count(f"skipping {skipped['file']}: {skipped['reason']}") == 1
    assert messages[-1] == f"segmented 6 images (MS+flip), skipped 2 (see predictions.json); results in {run_dir}"


def test_stop_on_bad_file_ends_the_run_at_that_file_naming_it(tmp_path, checkpoint):
    write_photo(tmp_path / "photos" / "a.png", 20, 20, seed=0)
    truncated_jpeg(tmp_path / "photos" / "b.jpg", seed=1)
    write_photo(tmp_path / "photos" / "c.png", 20, 20, seed=2)
    run_dir = tmp_path / "run"
    cfg = compose_config("predict", [
        f"checkpoint={checkpoint}", f"input={tmp_path / 'photos'}", "stop_on_bad_file=true", *QUIET,
    ])

    message = rf"^{re.escape(str(tmp_path / 'photos' / 'b.jpg'))}: cannot decode the image \(image file is truncated"
    with pytest.raises(DatasetError, match=message + r".*\(stop_on_bad_file=true; false skips such files\)$"):
        predict_files(cfg, run_dir)

    record = json.loads((run_dir / "predictions.json").read_text())
    assert list(record["images"]) == ["a"] and outputs(run_dir) == {"a"}  # what was done before it: resumable
    assert record["finished"] is False and record["remaining"] == 2


def test_a_run_whose_every_file_is_bad_fails(tmp_path, checkpoint):
    (tmp_path / "empty.jpg").write_bytes(b"")
    cfg = compose_config("predict", [f"checkpoint={checkpoint}", f"input={tmp_path / 'empty.jpg'}", *QUIET])
    with pytest.raises(DatasetError, match=rf"^none of the 1 image could be read \(see predictions.json\): "
                                           rf"{re.escape(str(tmp_path / 'empty.jpg'))}: cannot decode the image"):
        predict_files(cfg, tmp_path / "run")


@pytest.mark.slow
def test_a_run_stopped_by_a_signal_lists_what_it_wrote_and_resumes_to_the_same_outputs(
    tmp_path, checkpoint, monkeypatch, capsys, caplog
):
    for index in range(6):
        write_photo(tmp_path / "photos" / f"p{index}.png", 24 + 4 * index, 30, seed=index)
    overrides = [f"checkpoint={checkpoint}", f"input={tmp_path / 'photos'}", *QUIET]
    predict_files(compose_config("predict", overrides), tmp_path / "uninterrupted")
    # Every batch's record written at once; the size listed in it before each write noted.
    monkeypatch.setattr(predict_module, "SAVE_INTERVAL", 0)
    monkeypatch.setattr(predict_module, "SAVE_COST_FACTOR", 0)
    run_dir, listed_before_writes, real_writer = tmp_path / "run", [], predict_module.prediction_writer

    def writer_signalled_at_the_third_image(cfg, output_dir):
        write = real_writer(cfg, output_dir)

        def write_then_stop(batch, prediction):
            listed_before_writes.append(len(json.loads((run_dir / "predictions.json").read_text())["images"]))
            if len(listed_before_writes) == 3:
                os.kill(os.getpid(), signal.SIGTERM)  # handled in the middle of this image's outputs
            write(batch, prediction)

        return write_then_stop

    monkeypatch.setattr(predict_module, "prediction_writer", writer_signalled_at_the_third_image)
    handlers = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    with pytest.raises(PredictionStopped) as stopped:
        predict_files(compose_config("predict", overrides), run_dir)

    assert stopped.value.exit_status == 130
    assert listed_before_writes == [0, 1, 2]  # rewritten after every batch
    record = json.loads((run_dir / "predictions.json").read_text())
    assert list(record["images"]) == ["p0", "p1", "p2"]
    assert outputs(run_dir) == outputs(run_dir, "overlays") == {"p0", "p1", "p2"}
    assert record["stopped_by"] == "SIGTERM" and record["finished"] is False and record["remaining"] == 3
    assert capsys.readouterr().err.splitlines() == [
        f"stopped by SIGTERM after 3 of 6 images; {run_dir / 'predictions.json'} lists them; "
        "re-run the same command to resume"
    ]
    assert signal.getsignal(signal.SIGTERM) == handlers[0] and signal.getsignal(signal.SIGINT) == handlers[1]

    monkeypatch.setattr(predict_module, "prediction_writer", real_writer)
    (run_dir / "predictions" / "p1.png").write_bytes(b"")  # damaged since: redone
    kept = {name: (run_dir / name).stat().st_ino for name in ("predictions/p0.png", "overlays/p2.jpg")}
    write_photo(run_dir / "predictions" / "gone.png", 4, 4, seed=0)  # of an image not in this run: removed
    segmented = count_segmented_images(monkeypatch)
    with caplog.at_level(logging.INFO, logger="emanet"):
        summary = predict_files(compose_config("predict", overrides), run_dir)

    assert segmented == [1, 1, 1, 1]  # p1, p3, p4, p5
    assert {name: (run_dir / name).stat().st_ino for name in kept} == kept  # not rewritten (writes replace files)
    messages = [record.getMessage() for record in caplog.records]
    assert (
        f"resuming {run_dir}: 2 of 6 images were segmented there with this checkpoint and protocol; segmenting the "
        "other 4 (1 of them again: outputs missing or unreadable); removed the outputs of 1 image not in this run"
    ) in messages
    assert messages[-1] == f"segmented 6 images (MS+flip, 2 of them in an earlier run); results in {run_dir}"
    assert summary == json.loads((tmp_path / "uninterrupted" / "predictions.json").read_text())
    for folder, suffix in (("predictions", ".png"), ("overlays", ".jpg")):
        assert outputs(run_dir, folder) == {f"p{index}" for index in range(6)}
        for index in range(6):
            name = f"{folder}/p{index}{suffix}"
            assert (run_dir / name).read_bytes() == (tmp_path / "uninterrupted" / name).read_bytes(), name


@pytest.mark.slow
@pytest.mark.parametrize("change", ["checkpoint", "eval.flip=false"])
def test_a_rerun_with_another_checkpoint_or_protocol_replaces_the_outputs(tmp_path, checkpoint, monkeypatch, caplog,
                                                                          change):
    for name in ("a", "b", "c"):
        write_photo(tmp_path / "photos" / f"{name}.png", 20, 24, seed=ord(name))
    run_dir = tmp_path / "run"
    predict_files(compose_config("predict", [f"checkpoint={checkpoint}", f"input={tmp_path / 'photos'}", *QUIET]),
                  run_dir)
    (tmp_path / "photos" / "c.png").unlink()
    overrides = [f"checkpoint={checkpoint}", f"input={tmp_path / 'photos'}", *QUIET]
    if change == "checkpoint":
        save_random_model(tmp_path / "other.pt", seed=1, iteration=8)
        overrides[0] = f"checkpoint={tmp_path / 'other.pt'}"
    else:
        overrides.append(change)
    segmented = count_segmented_images(monkeypatch)

    with caplog.at_level(logging.INFO, logger="emanet"):
        summary = predict_files(compose_config("predict", overrides), run_dir)

    assert segmented == [1, 1]
    assert outputs(run_dir) == outputs(run_dir, "overlays") == {"a", "b"}
    assert list(summary["images"]) == ["a", "b"]
    assert summary["iteration"] == (8 if change == "checkpoint" else 7)
    what = "checkpoint" if change == "checkpoint" else "eval protocol"
    assert (
        f"replacing the predictions of 3 images in {run_dir}, made with another {what}: segmenting all 2 images of "
        "this run anew; removed the outputs of 1 image not in this run"
    ) in [record.getMessage() for record in caplog.records]


# scripts/predict.py as a user runs it, in a process group of its own, as a terminal's
# foreground job: Ctrl-C sends SIGINT to the group, data-loading workers included. Each
# image's segmentation takes a quarter of a second more, so that the run is still going
# (and in the middle of an image, not writing one) when the signal comes, however fast the
# machine.
PACED_SCRIPT = """
import runpy, sys, time
from emanet.engine.segmenter import Segmenter
real_predict_classes = Segmenter.predict_classes
def paced(*args, **kwargs):
    time.sleep(0.25)
    return real_predict_classes(*args, **kwargs)
Segmenter.predict_classes = paced
sys.argv = ["scripts/predict.py", *sys.argv[1:]]
runpy.run_path("scripts/predict.py", run_name="__main__")
"""


@pytest.mark.slow
def test_ctrl_c_ends_the_script_with_one_line_status_130_and_a_record_to_resume_from(tmp_path, checkpoint,
                                                                                    monkeypatch):
    for index in range(8):
        write_photo(tmp_path / "photos" / f"p{index}.png", 32, 40, seed=index)
    run_dir = tmp_path / "run"
    overrides = [f"checkpoint={checkpoint}", f"input={tmp_path / 'photos'}", *QUIET, "runtime.num_workers=2"]
    process = subprocess.Popen(
        [sys.executable, "-c", PACED_SCRIPT, *overrides, f"hydra.run.dir={run_dir}"], cwd=REPO,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    deadline = time.monotonic() + 120
    while len(outputs(run_dir) if (run_dir / "predictions").is_dir() else ()) < 2 and process.poll() is None:
        assert time.monotonic() < deadline, "no outputs within 2 minutes"
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGINT)
    _, stderr = process.communicate(timeout=60)

    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr and "exited unexpectedly" not in stderr
    stopped = re.fullmatch(
        rf"stopped by SIGINT after (\d+) of 8 images; {re.escape(str(run_dir / 'predictions.json'))} lists them; "
        "re-run the same command to resume", stderr.splitlines()[-1],
    )
    assert stopped, stderr
    done = int(stopped[1])
    record = json.loads((run_dir / "predictions.json").read_text())
    assert set(record["images"]) == outputs(run_dir) == outputs(run_dir, "overlays")
    assert len(record["images"]) == done < 8 and record["stopped_by"] == "SIGINT"

    segmented = count_segmented_images(monkeypatch)
    summary = predict_files(compose_config("predict", overrides), run_dir)

    assert sum(segmented) == 8 - done and summary["finished"] is True
    assert outputs(run_dir) == outputs(run_dir, "overlays") == {f"p{index}" for index in range(8)}
