"""Checkpoints a long run can trust: digests, falling back from a bad newest checkpoint,
leftovers of killed writes, atomicity, and a full disk."""

import errno
import logging
import os
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from helpers import TINY, assert_same_weights, compose_config, copy_checkpoints

from emanet.cli import one_line_errors
from emanet.engine.checkpoint import (
    load_checkpoint,
    newest_checkpoint,
    save_checkpoint,
    save_training_checkpoint,
)
from emanet.engine.train import train
from emanet.errors import CheckpointError


def flip_bytes_in_largest_tensor(path: Path) -> None:
    """Flip 64 bytes inside the record of the checkpoint's largest tensor (stored as they are
    in the archive, so no check of torch's notices)."""
    tensors = [value for value in torch.load(path, weights_only=True)["model"].values() if value.numel() > 64]
    largest = max(tensors, key=lambda tensor: tensor.numel())
    raw = bytearray(path.read_bytes())
    start = raw.find(largest.numpy().tobytes())
    assert start >= 0
    raw[start + 16:start + 80] = bytes(byte ^ 0xFF for byte in raw[start + 16:start + 80])
    path.write_bytes(raw)  # in place: a hard link (last.pt) sees the damage too


def small_state(iteration: int) -> dict:
    torch.manual_seed(iteration)
    return {"model": {"weight": torch.randn(64, 64)}, "iteration": iteration}


def test_a_checkpoint_carries_its_digest_and_damage_is_refused_naming_both_digests(tmp_path):
    path = tmp_path / "model.pt"
    save_checkpoint(small_state(1), path)
    digest = (tmp_path / "model.pt.sha256").read_text()
    assert digest.endswith("  model.pt\n")
    subprocess.run(["sha256sum", "--check", "--quiet", "model.pt.sha256"], cwd=tmp_path, check=True)
    assert load_checkpoint(path)["iteration"] == 1

    flip_bytes_in_largest_tensor(path)
    torch.load(path, weights_only=True)  # what loading trusted before: the file still reads
    with pytest.raises(CheckpointError) as raised:
        load_checkpoint(path)
    actual = subprocess.run(["sha256sum", str(path)], capture_output=True, text=True, check=True).stdout.split()[0]
    assert str(raised.value) == (
        f"checkpoint {path} is damaged: its SHA-256 digest is {actual}, but {path}.sha256 records {digest.split()[0]}"
    )


def test_last_pt_is_checked_against_the_digest_of_the_checkpoint_it_links(tmp_path, caplog):
    save_training_checkpoint(small_state(1), tmp_path, keep=3)
    save_training_checkpoint(small_state(2), tmp_path, keep=3)
    with caplog.at_level(logging.WARNING):
        assert load_checkpoint(tmp_path)["iteration"] == 2  # a directory: its last.pt
    assert caplog.text == ""  # verified, not loaded unverified
    flip_bytes_in_largest_tensor(tmp_path / "iter_0000002.pt")
    with pytest.raises(CheckpointError, match=rf"checkpoint {tmp_path / 'last.pt'} is damaged: .* but "
                                              rf"{tmp_path / 'iter_0000002.pt.sha256'} records "):
        load_checkpoint(tmp_path / "last.pt")


def test_last_pt_of_a_copied_folder_is_checked_against_its_own_digest(tmp_path, caplog):
    save_training_checkpoint(small_state(1), tmp_path / "run", keep=3)
    save_training_checkpoint(small_state(2), tmp_path / "run", keep=3)
    shutil.copytree(tmp_path / "run", tmp_path / "copy")  # as rsync without -H: the hard links are lost
    assert not os.path.samefile(tmp_path / "copy" / "last.pt", tmp_path / "copy" / "iter_0000002.pt")
    with caplog.at_level(logging.WARNING):
        assert load_checkpoint(tmp_path / "copy")["iteration"] == 2
    assert caplog.text == ""
    flip_bytes_in_largest_tensor(tmp_path / "copy" / "last.pt")
    with pytest.raises(CheckpointError, match=rf"but {tmp_path / 'copy' / 'last.pt.sha256'} records "):
        load_checkpoint(tmp_path / "copy" / "last.pt")


@pytest.mark.skipif(shutil.which("sha256sum") is None, reason="needs coreutils' sha256sum")
def test_last_pt_copied_alone_with_its_digest_passes_sha256sum_and_loading(tmp_path, caplog):
    save_training_checkpoint(small_state(1), tmp_path / "run", keep=3)
    save_training_checkpoint(small_state(2), tmp_path / "run", keep=3)
    (tmp_path / "copy").mkdir()
    for name in ("last.pt", "last.pt.sha256"):  # no iter_*.pt beside them
        shutil.copy(tmp_path / "run" / name, tmp_path / "copy")
    checked = subprocess.run(["sha256sum", "-c", "last.pt.sha256"], cwd=tmp_path / "copy", capture_output=True,
                             text=True)
    assert (checked.returncode, checked.stdout, checked.stderr) == (0, "last.pt: OK\n", "")
    with caplog.at_level(logging.WARNING):
        assert load_checkpoint(tmp_path / "copy" / "last.pt")["iteration"] == 2
    assert caplog.text == ""  # verified against its digest, not loaded unverified
    # The training checkpoint's own digest still names it: last.pt's was not written through it.
    digest = (tmp_path / "run" / "last.pt.sha256").read_text().split()[0]
    assert (tmp_path / "run" / "iter_0000002.pt.sha256").read_text() == f"{digest}  iter_0000002.pt\n"


def test_last_pt_digest_linked_by_an_earlier_version_is_replaced_not_written_through(tmp_path):
    save_checkpoint(small_state(1), tmp_path / "iter_0000001.pt")
    os.link(tmp_path / "iter_0000001.pt", tmp_path / "last.pt")  # as earlier versions left a run
    os.link(tmp_path / "iter_0000001.pt.sha256", tmp_path / "last.pt.sha256")
    recorded = (tmp_path / "iter_0000001.pt.sha256").read_text()
    save_training_checkpoint(small_state(2), tmp_path, keep=3)
    assert (tmp_path / "iter_0000001.pt.sha256").read_text() == recorded
    assert load_checkpoint(tmp_path / "iter_0000001.pt")["iteration"] == 1
    assert load_checkpoint(tmp_path / "last.pt")["iteration"] == 2


def test_a_reader_of_last_pt_checks_the_checkpoint_it_opened_while_training_moves_last_pt_on(tmp_path):
    from emanet.engine.checkpoint import check_digest

    save_training_checkpoint(small_state(1), tmp_path, keep=3)
    with open(tmp_path / "last.pt", "rb") as opened:  # iteration 1's
        save_training_checkpoint(small_state(2), tmp_path, keep=3)  # last.pt and its digest: iteration 2's
        check_digest(opened, tmp_path / "last.pt")  # against iteration 1's digest: no false alarm
        assert torch.load(opened, weights_only=True)["iteration"] == 1


def test_resuming_from_a_checkpoint_without_a_digest_leaves_last_pt_without_one(tmp_path):
    from emanet.engine.checkpoint import newest_intact_checkpoint

    save_training_checkpoint(small_state(1), tmp_path, keep=3)
    torch.save(small_state(2), tmp_path / "iter_0000002.pt")  # an earlier version's, no digest
    path, state = newest_intact_checkpoint(tmp_path)
    assert path == tmp_path / "iter_0000002.pt" and state["iteration"] == 2
    assert os.path.samefile(tmp_path / "last.pt", path)
    assert not (tmp_path / "last.pt.sha256").exists()  # iteration 1's would call last.pt damaged


def test_a_checkpoint_without_a_digest_loads_with_a_one_line_warning(tmp_path, caplog):
    torch.save(small_state(3), tmp_path / "old.pt")  # as an earlier version wrote them
    with caplog.at_level(logging.WARNING, logger="emanet.engine.checkpoint"):
        assert load_checkpoint(tmp_path / "old.pt")["iteration"] == 3
    assert [record.getMessage() for record in caplog.records] == [
        f"checkpoint {tmp_path / 'old.pt'} has no SHA-256 digest (old.pt.sha256; written by an earlier version?): "
        "loading it unverified"
    ]


def test_an_empty_checkpoint_is_named_as_empty(tmp_path):
    (tmp_path / "iter_0000001.pt").write_bytes(b"")
    with pytest.raises(CheckpointError) as raised:
        load_checkpoint(tmp_path / "iter_0000001.pt")
    assert str(raised.value) == f"cannot read checkpoint {tmp_path / 'iter_0000001.pt'}: the file is empty (0 bytes)"


def test_evaluation_refuses_a_damaged_checkpoint(tmp_path):
    from emanet.cli import compose_config as compose_entry_config
    from emanet.engine.segmenter import load_trained_model
    from emanet.models.segmentor import build_model

    cfg = compose_entry_config("evaluate", [f"checkpoint={tmp_path / 'model.pt'}"])
    model = build_model(cfg.model, cfg.dataset.num_classes, load_pretrained=False)
    save_checkpoint({"model": model.state_dict(), "iteration": 7}, tmp_path / "model.pt")
    load_trained_model(cfg, torch.device("cpu"))
    flip_bytes_in_largest_tensor(tmp_path / "model.pt")
    with pytest.raises(CheckpointError, match=r"model.pt is damaged"):
        load_trained_model(cfg, torch.device("cpu"))  # evaluate.py, predict.py, visualize_bases.py


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["flipped", "truncated", "empty"])
def test_a_bad_newest_checkpoint_is_set_aside_and_the_run_resumes_from_the_previous_one(
    full_run, data_root, tmp_path, caplog, damage
):
    directory = copy_checkpoints(full_run, tmp_path, [4, 5])
    newest = directory / "iter_0000005.pt"
    if damage == "flipped":
        flip_bytes_in_largest_tensor(newest)
    else:
        newest.write_bytes(newest.read_bytes()[: len(newest.read_bytes()) // 2 if damage == "truncated" else 0])
    os.link(newest, directory / "last.pt")
    damaged = newest.read_bytes()
    with caplog.at_level(logging.INFO, logger="emanet.engine"):
        train(compose_config([*TINY, f"data_root={data_root}"]), tmp_path)
    set_aside = [record.getMessage() for record in caplog.records if "set it aside" in record.getMessage()]
    assert len(set_aside) == 1
    assert set_aside[0].startswith(f"cannot read checkpoint {newest}: the file is empty" if damage == "empty"
                                   else f"checkpoint {newest} is damaged: its SHA-256 digest is ")
    assert set_aside[0].endswith("; set it aside as iter_0000005.pt.corrupt and fell back to the previous checkpoint")
    assert f"resuming from {directory / 'iter_0000004.pt'} (iteration 4)" in caplog.text
    assert (directory / "iter_0000005.pt.corrupt").read_bytes() == damaged  # kept for a look, not deleted
    # Not a checkpoint any more: rotation keeps the newest three of the resumed run.
    assert sorted(path.name for path in directory.glob("iter_*.pt")) == [
        "iter_0000004.pt", "iter_0000005.pt", "iter_0000006.pt"
    ]
    resumed = load_checkpoint(directory / "last.pt")
    assert resumed["iteration"] == 6
    assert_same_weights(resumed, torch.load(full_run / "checkpoints" / "last.pt", weights_only=True))


@pytest.mark.slow
def test_leftovers_of_a_killed_checkpoint_write_are_removed_when_the_run_restarts(full_run, data_root, tmp_path):
    directory = copy_checkpoints(full_run, tmp_path, [6])
    leftovers = [".iter_0000007.pt.k2j4f9.tmp", ".iter_0000007.pt.sha256.x81bq0.tmp", ".last.pt.tmp",
                 "iter_0000007.pt.sha256"]  # the last: a digest whose checkpoint never took its name
    for name in leftovers:
        (directory / name).write_bytes(b"half a checkpoint")
    train(compose_config([*TINY, f"data_root={data_root}"]), tmp_path)  # resumes at the end: evaluates only
    assert sorted(path.name for path in directory.iterdir()) == [
        "iter_0000006.pt", "iter_0000006.pt.sha256", "last.pt", "last.pt.sha256"
    ]


def test_a_write_that_fails_midway_leaves_the_previous_checkpoint_the_newest(tmp_path, monkeypatch):
    save_training_checkpoint(small_state(1), tmp_path, keep=3)
    real_save = torch.save

    def save_that_fails_midway(state, file):
        real_save(state, file)
        with open(file, "r+b") as opened:
            opened.truncate(100)
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(torch, "save", save_that_fails_midway)
    with pytest.raises(OSError, match="Input/output error"):
        save_training_checkpoint(small_state(2), tmp_path, keep=3)
    assert newest_checkpoint(tmp_path) == tmp_path / "iter_0000001.pt"
    assert load_checkpoint(tmp_path / "last.pt")["iteration"] == 1
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        "iter_0000001.pt", "iter_0000001.pt.sha256", "last.pt", "last.pt.sha256"
    ]


@pytest.mark.parametrize("failure", [
    OSError(errno.ENOSPC, "No space left on device"),
    RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598"),  # torch's, for ENOSPC
])
def test_a_full_disk_is_reported_in_one_line_and_the_previous_checkpoint_stays(tmp_path, monkeypatch, capsys, failure):
    save_training_checkpoint(small_state(1), tmp_path, keep=3)
    real_save = torch.save

    def save_on_a_full_disk(state, file):
        real_save({"some": "bytes"}, file)
        raise failure

    monkeypatch.setattr(torch, "save", save_on_a_full_disk)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: SimpleNamespace(free=12345))
    with pytest.raises(SystemExit) as exit_status, one_line_errors():
        save_training_checkpoint(small_state(2), tmp_path, keep=3)
    assert exit_status.value.code == 2
    assert capsys.readouterr().err == (
        f"error: cannot write checkpoint {tmp_path / 'iter_0000002.pt'}: the disk is full (12,345 bytes free in "
        f"{tmp_path}); the previous checkpoint {tmp_path / 'iter_0000001.pt'} is intact: free some space and run "
        "the same command again\n"
    )
    assert load_checkpoint(tmp_path / "last.pt")["iteration"] == 1
    assert newest_checkpoint(tmp_path) == tmp_path / "iter_0000001.pt"
