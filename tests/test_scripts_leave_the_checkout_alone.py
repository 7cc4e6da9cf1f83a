"""Scripts run from the repository write their results to run directories, not into the
checkout: the published docs change only when asked (scripts/benchmark.py --record)."""

import os
import subprocess
import sys

import pytest
import torch
from tests_paths import REPO

from emanet import visualize_bases
from emanet.cli import compose_config
from emanet.models.segmentor import build_model

PUBLISHED = [REPO / "docs" / "benchmarks.jsonl", REPO / "docs" / "benchmarks.md"]


@pytest.mark.slow
def test_a_toy_benchmark_goes_to_a_run_directory_under_the_working_directory(tmp_path):
    before = [path.read_bytes() for path in PUBLISHED]
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "benchmark.py"), "unit", "--sizes", "5", "--channels", "8",
         "--repeats", "1", "--memory-formats", "contiguous"],
        cwd=tmp_path, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert [path.read_bytes() for path in PUBLISHED] == before
    [run_dir] = (tmp_path / "runs" / "benchmarks").iterdir()
    assert sorted(path.name for path in run_dir.iterdir()) == ["benchmarks.jsonl", "benchmarks.md"]
    assert f"results in {run_dir.relative_to(tmp_path)} (--record publishes them" in result.stdout


@pytest.mark.slow
def test_visualize_bases_writes_into_the_checkpoints_run_directory(tmp_path, monkeypatch, capsys):
    overrides = ["experiment=demo", f"data_root={tmp_path / 'data'}", "dataset.generate.num_train=2",
                 "dataset.generate.num_val=2"]
    cfg = compose_config("train", overrides)  # the network the checkpoint is of
    run_dir = tmp_path / "runs" / "demo" / "2026-12-02_10-00-00"
    (run_dir / "checkpoints").mkdir(parents=True)
    torch.save({"model": build_model(cfg.model, 5).state_dict()}, run_dir / "checkpoints" / "last.pt")
    working_directory = tmp_path / "repository"
    working_directory.mkdir()
    monkeypatch.chdir(working_directory)
    monkeypatch.setattr(sys, "argv", ["visualize_bases.py", "--bases", "0", "--", *overrides, f"checkpoint={run_dir}"])
    visualize_bases.main()
    assert capsys.readouterr().out.strip() == f"bases [0] written to {run_dir / 'bases.png'}"
    assert (run_dir / "bases.png").is_file()
    assert list(working_directory.iterdir()) == []


@pytest.mark.slow
def test_a_demo_benchmark_goes_to_a_run_directory_unless_recorded(tmp_path):
    before = [path.read_bytes() for path in PUBLISHED]
    tiny = ["schedule.iterations=2", "schedule.batch_size=2", "dataset.generate.num_train=2",
            "dataset.generate.num_val=1", "eval.scales=[1.0]", "runtime.num_workers=0", "runtime.progress=false"]
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "benchmark_demo.py"), "--out", str(tmp_path / "out"), *tiny],
        cwd=tmp_path, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert [path.read_bytes() for path in PUBLISHED] == before
    [line] = (tmp_path / "out" / "benchmarks.jsonl").read_text().splitlines()
    assert '"benchmark": "demo"' in line and '"iterations": 2' in line
