"""scripts/reproduce_paper.py (emanet.reproduce_paper, emanet.reproduce): the paper's runs under
one root, their prerequisites and costs, the smoke pipeline on the submitit launcher, and the
tables it writes."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from PIL import Image
from tests_paths import REPO

from emanet import reproduce
from emanet.engine.runtime import usable_cores
from emanet.errors import ConfigError
from emanet.paper_numbers import BEYOND_EXPERIMENTS, TABLE1_ROWS
from emanet.reproduce_paper import chosen_parts, reproduce_paper

DOCS = REPO / "docs"  # the published measurements the GPU-hours are read from


def dry_run(capsys, overrides=(), root=None, parts=reproduce.PARTS, **options) -> tuple[int, list[str]]:
    status = reproduce_paper(root, parts, list(overrides), DOCS, "python scripts/reproduce_paper.py --dry-run",
                             dry_run=True, **options)
    return status, capsys.readouterr().out.splitlines()


def csv_rows(path: Path) -> dict[str, dict]:
    with path.open() as file:
        return {row["method"]: row for row in csv.DictReader(file)}


@pytest.mark.slow
def test_smoke_run_writes_every_table_and_a_second_run_launches_nothing(tmp_path):
    # Tiny runs side by side in separate processes (the submitit local launcher).
    command = [
        sys.executable, str(REPO / "scripts" / "reproduce_paper.py"), "--smoke", "--root", "root", "--max-stages", "1",
        "hydra/launcher=submitit_local", "runtime.progress=false", "data_root=data",
    ]
    first = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr[-3000:]
    root = tmp_path / "root"
    assert "0 of 18 runs finished; 5 multirun(s) to launch" in first.stderr
    assert (tmp_path / "data" / "demo_smoke" / "VOC2012").is_dir()  # data_root relative to the current directory
    for stem in ("table1", "table3", "table4", "iteration_table", "beyond"):
        assert f"written: {root / stem}.md" in first.stdout
        assert Image.open(root / f"{stem}.png").width > 300
    emanet512 = json.loads((root / "resnet101" / "voc_emanet512" / "metrics.json").read_text())
    config = OmegaConf.load(root / "resnet101" / "voc_emanet512" / "config.yaml")
    assert (config.dataset.name, config.model.backbone.depth, config.schedule.iterations) == ("demo", 18, 2)
    assert (config.runtime.threads, config.runtime.num_workers) == (1, 0)  # the smoke's, side by side
    # At most a job per usable core at any time: each run lasts from Hydra's .hydra/ at its
    # start to its metrics.json, and the launcher starts no job before the ones it waits for end.
    spans = [(run.parent / ".hydra" / "config.yaml", run) for run in root.rglob("metrics.json")]
    assert len(spans) == 18
    events = sorted(event for start, end in spans for event in ((start.stat().st_mtime_ns, 1),
                                                                 (end.stat().st_mtime_ns, -1)))
    running = [sum(change for _, change in events[: i + 1]) for i in range(len(events))]
    assert max(running) <= usable_cores(), events

    table1 = csv_rows(root / "table1.csv")
    for method in TABLE1_ROWS.values():
        assert table1[method]["ss"] and table1[method]["ms_flip"], method
    assert float(table1["EMANet(512)"]["ms_flip"]) == emanet512["mIoU"]
    assert float(table1["EMANet(512)"]["ss"]) == emanet512["single_scale"]["mIoU"]
    assert table1["EMANet(512)"]["paper_ms_flip"] == "81.32"
    assert table1["EMANet(512)"]["flops_g"] == ""  # the paper's network's, not the demo's trained here
    assert f"| EMANet(512) | {emanet512['single_scale']['mIoU']:.2f} | 80.05 |" in (root / "table1.md").read_text()
    for number, paper in ((3, {"EMANet (ResNet-101)": "53.1", "EMANet (ResNet-50)": "50.5"}),
                          (4, {"EMANet (ResNet-101)": "39.9", "EMANet (ResNet-50)": "37.6"})):
        rows = csv_rows(root / f"table{number}.csv")
        for method, value in paper.items():
            assert rows[method]["mIoU"] and rows[method]["paper_mIoU"] == value, (number, method)
    resnet50 = json.loads((root / "resnet50" / "cocostuff10k_emanet512" / "metrics.json").read_text())
    assert float(csv_rows(root / "table4.csv")["EMANet (ResNet-50)"]["mIoU"]) == resnet50["mIoU"]
    evaluation = json.loads((root / "iteration" / "T1" / "eval_ss_T1" / "metrics.json").read_text())
    assert evaluation["eval"]["eval_stages"] == 1
    assert (root / "iteration_table.csv").read_text().splitlines()[1] == f"1,1,{evaluation['mIoU']},77.34"
    with (root / "beyond.csv").open() as file:
        beyond = [row for row in csv.DictReader(file) if row["weights"] == "trained here"]
    assert {row["experiment"] for row in beyond} == set(BEYOND_EXPERIMENTS) == {
        "cityscapes_emanet512", "cityscapes_r50_emanet512", "cityscapes_mmseg_r101", "cityscapes_mmseg_r50",
        "ade20k_emanet512",
    }
    assert all(row["ss"] for row in beyond)
    mmseg = json.loads((root / "beyond" / "cityscapes_mmseg_r101" / "metrics.json").read_text())
    assert mmseg["eval"]["eval_stages"] == 3  # the mmsegmentation head's T is recorded like the release's

    stamps = {path: path.stat().st_mtime_ns for path in root.rglob("*") if path.suffix in (".json", ".pt")}
    second = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "18 of 18 runs finished; 0 multirun(s) to launch" in second.stderr
    assert "starting" not in second.stderr
    assert {path: path.stat().st_mtime_ns for path in stamps} == stamps  # no run touched



def test_only_a_cluster_launchers_multiruns_are_launched_together():
    # A local launcher's multirun already runs as many jobs as the machine holds.
    for overrides, cluster in (([], False), (["hydra/launcher=basic"], False),
                               (["hydra/launcher=submitit_local", "hydra.launcher.timeout_min=5"], False),
                               (["hydra/launcher=slurm_4gpu", "hydra.launcher.partition=gpu"], True),
                               (["hydra/launcher=submitit_slurm"], True)):
        assert reproduce.uses_cluster_launcher(overrides) == cluster, overrides


@pytest.mark.slow
def test_dry_run_names_each_missing_prerequisite_and_its_command(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("EMANET_DATA_ROOT", raising=False)
    monkeypatch.chdir(tmp_path)
    data = tmp_path / "elsewhere"
    context = data / "VOCdevkit" / "VOC2010" / "ImageSets" / "SegmentationContext"
    context.mkdir(parents=True)
    (context / "train.txt").write_text("a\nb\nc\n")  # a partly prepared split
    status, lines = dry_run(capsys, [f"data_root={data}"], parts=["table3"])
    assert status == 2
    prepare = f"EMANET_DATA_ROOT={data} python scripts/prepare_dataset.py pascal_context"
    assert lines[-4:] == [
        f"incomplete: {context / 'train.txt'} lists 3 images, the published pascal_context train split 4998: {prepare}",
        f"missing: {context / 'val.txt'} (pascal_context val split, 5105 images): {prepare}",
        f"missing: {data / 'pretrained' / 'resnet101_deep_stem.pth'} (model.backbone.pretrained): save the release's "
        "ImageNet deep-stem ResNet-101 there (docs/models.md, \"Pretrained backbones\")",
        f"missing: {data / 'pretrained' / 'resnet50_deep_stem.pth'} (model.backbone.pretrained): save the release's "
        "ImageNet deep-stem ResNet-50 there (docs/models.md, \"Pretrained backbones\")",
    ]
    assert lines[0] == "2 runs (0 finished):"
    root = tmp_path / "runs" / "paper"
    assert lines[1].split()[:4] == ["table3", "train", "to", "run"]
    context101, context50 = root / "resnet101" / "context_emanet512", root / "resnet50" / "context_emanet512"
    assert f"GPU-h  {context101}  experiment=context_emanet512 data_root={data}" in lines[1]
    assert f"{context50}  experiment=context_emanet512 model.backbone.depth=50" in lines[2]
    assert "an assumed 100 TFLOP/s sustained" in lines[4] and "4 missing prerequisite(s):" in lines
    assert not root.exists()  # a dry run writes nothing

    # torchvision's weights are looked for in the torch hub cache; ready data needs no command.
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    (context / "val.txt").write_text("a\n")
    status, lines = dry_run(capsys, [f"data_root={data}", "model.backbone.pretrained=torchvision",
                                     "model.backbone.stem=torchvision"], parts=["table3"])
    assert status == 2
    fetch = "python -c \"import torchvision; torchvision.models.get_model_weights('resnet50')"
    assert any(line.startswith(f"missing: {tmp_path / 'torch' / 'hub' / 'checkpoints' / 'resnet50-'}") and
               line.endswith(f"(torchvision ResNet-50 weights): {fetch}.IMAGENET1K_V1.get_state_dict(progress=True)\"")
               for line in lines)


@pytest.mark.slow
def test_dry_run_lists_every_run_of_the_parts_chosen(tmp_path, capsys):
    root = tmp_path / "root"
    status, lines = dry_run(capsys, [f"data_root={tmp_path}"], root, smoke=True, max_stages=2)
    assert status == 0  # the smoke test needs no data: it generates the demo's
    listed = [line.split("GPU-h  ")[1].split("  ")[0] for line in lines if "GPU-h  " in line]
    iteration = [f"iteration/{name}" for name in ("T1", "T2", "T1/eval_ss_T1", "T1/eval_ss_T2", "T2/eval_ss_T2")]
    expected = [*(f"resnet101/{experiment}" for experiment in TABLE1_ROWS), "resnet101/context_emanet512",
                "resnet50/context_emanet512", "resnet101/cocostuff10k_emanet512", "resnet50/cocostuff10k_emanet512",
                *(f"beyond/{experiment}" for experiment in BEYOND_EXPERIMENTS), *iteration]
    assert listed == [str(root / path) for path in expected]
    assert lines[-1] == "0 missing prerequisite(s)"

    status, lines = dry_run(capsys, [], root, chosen_parts("table4,iteration"), smoke=True, max_stages=1)
    listed = [line.split("GPU-h  ")[1].split("  ")[0] for line in lines if "GPU-h  " in line]
    assert listed == [str(root / path) for path in ("resnet101/cocostuff10k_emanet512",
                                                    "resnet50/cocostuff10k_emanet512", "iteration/T1",
                                                    "iteration/T1/eval_ss_T1")]
    with pytest.raises(ConfigError) as error:  # a bad override stops it before anything is launched
        reproduce_paper(root, ["table4"], ["optim.lrr=3"], DOCS, "", smoke=True)
    assert str(error.value) == ("optim.lrr=3: optim.lrr is not a setting: did you mean optim.lr? (python train.py "
                                "experiment=cocostuff10k_emanet512 dataset=demo --cfg job lists every setting)")
    assert not root.exists()
    with pytest.raises(ConfigError) as error:
        chosen_parts("table2")
    assert str(error.value) == "--only takes parts among table1,table3,table4,iteration,beyond, got 'table2'"
    # --record times a smoke run from scratch: a root with a finished run is refused before anything runs.
    finished = root / "resnet101" / "cocostuff10k_emanet512"
    finished.mkdir(parents=True)
    (finished / "metrics.json").write_text("{}")
    with pytest.raises(ConfigError) as error:
        reproduce_paper(root, ["table4"], [], DOCS, "", smoke=True, record=True)
    assert str(error.value) == f"--record times a smoke run from scratch, and {root} holds finished runs: " \
        "pass a new --root"


@pytest.mark.slow
@pytest.mark.parametrize(("argv", "message"), [
    (["--only", "table2"], "--only takes parts among table1,table3,table4,iteration,beyond, got 'table2'"),
    (["--record"], "--record times a smoke run: pass --smoke, without --dry-run"),
    (["--smoke", "--record", "--dry-run"], "--record times a smoke run: pass --smoke, without --dry-run"),
])
def test_the_script_refuses_options_that_do_not_go_together(argv, message):
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "reproduce_paper.py"), *argv],
                            capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
    assert result.returncode == 2 and result.stderr.endswith(f"error: {message}\n")


def test_runs_of_one_backbone_are_one_multirun_and_evaluations_follow_their_trainings(tmp_path, monkeypatch):
    runs = reproduce.paper_runs(tmp_path, reproduce.PARTS, ["runtime.threads=1"], None, 2)
    sweeps = reproduce.unfinished_sweeps(runs)
    commands = [sweep.command(["hydra/launcher=submitit_slurm"]) for sweep in sweeps]
    # The installed package's programs, the same as train.py's and evaluate.py's.
    train, evaluate = reproduce.entry_point("train"), reproduce.entry_point("evaluate")
    assert (train.name, evaluate.name) == ("emanet-train", "emanet-evaluate")
    assert [command[1] for command in commands] == [str(train)] * 4 + [str(evaluate)]
    assert f"experiment={','.join([*TABLE1_ROWS, 'context_emanet512', 'cocostuff10k_emanet512'])}" in commands[0]
    assert f"experiment={','.join(BEYOND_EXPERIMENTS)}" in commands[2]
    assert "model.ema.train_stages=1,2" in commands[3]
    assert "+iteration_cell={train:1,eval:1},{train:1,eval:2},{train:2,eval:2}" in commands[4]
    assert all(command[-1] == "hydra/launcher=submitit_slurm" for command in commands)
    assert sweeps[4].needs == {tmp_path / "iteration" / "T1", tmp_path / "iteration" / "T2"}
    # A finished training leaves its multirun; the evaluations of a failed one are not started.
    finished = tmp_path / "resnet101" / "voc_fcn"
    finished.mkdir(parents=True)
    (finished / "metrics.json").write_text("{}")
    assert "voc_fcn" not in reproduce.unfinished_sweeps(runs)[0].command([])[3]
    failed = reproduce.Sweep([run for run in runs if run.cell == (2, 2)])  # T2 is in no other sweep
    problems = reproduce.launch([failed], [], together=True)
    assert problems == [f"not started: evaluate 1 run(s) in {tmp_path / 'iteration'}: T2/eval_ss_T2 (its training did "
                        f"not finish: {tmp_path / 'iteration' / 'T2'})"]
    # The evaluations of a training that finished still run when another training failed.
    (tmp_path / "iteration" / "T1").mkdir(parents=True)
    (tmp_path / "iteration" / "T1" / "metrics.json").write_text("{}")
    evaluations = reproduce.Sweep([run for run in runs if run.cell in ((1, 1), (2, 2))])
    started = []
    monkeypatch.setattr(reproduce.subprocess, "run", lambda command: started.append(command) or
                        subprocess.CompletedProcess(command, 0))
    problems = reproduce.launch([evaluations], [], together=False)
    assert [c for c in started[0] if c.startswith("+iteration_cell")] == ["+iteration_cell={train:1,eval:1}"]
    assert problems[0].startswith("not started: evaluate 1 run(s) in") and "T2/eval_ss_T2" in problems[0]
    assert problems[1] == f"exit status 0: evaluate 1 run(s) in {tmp_path / 'iteration'}: T1/eval_ss_T1; unfinished: " \
        "T1/eval_ss_T1"  # the stand-in wrote no metrics.json


def test_gpu_hours_come_from_a_gpu_measurement_where_there_is_one():
    cfg = OmegaConf.create({
        "runtime": {"amp": "bf16", "channels_last": True, "compile": False},
        "dataset": {"crop_size": 513, "name": "voc_aug", "val_split": "val"},
        "schedule": {"iterations": 30000, "batch_size": 16}, "eval": {"scales": [1.0], "flip": False},
    })
    measurement = {"machine": {"gpu": "NVIDIA H100"}, "model": "voc_emanet512 R101 OS8", "crop": 513,
                   "rows": [{"variant": "fp32", "images_per_second": 50.0},
                            {"variant": "bf16_cl", "images_per_second": 160.0}]}
    cpu = {**measurement, "machine": {"cpu": "x86_64"}}
    measured = reproduce.measured_images_per_second([measurement, cpu], "voc_emanet512 R101 OS8", cfg)
    assert measured == (160.0, "NVIDIA H100")
    run = reproduce.table_runs(Path("root"), ["table1"], {})[0]
    assert reproduce.run_cost(run, cfg, 1e12, measured, 100.0) == reproduce.Cost(
        30000 * 16 / 160.0 / 3600, "measured on NVIDIA H100")
    assert reproduce.measured_images_per_second([cpu], "voc_emanet512 R101 OS8", cfg) is None
    # Without one: 480,000 training crops and 1,449 single-scale passes at a third of a step.
    estimate = reproduce.run_cost(run, cfg, 1e12, None, 100.0)
    assert estimate.source == "estimate"
    assert estimate.gpu_hours == pytest.approx((480000 * 1e12 + 1449 * 1e12 / 3) / 100e12 / 3600)


def test_a_root_refuses_runs_made_with_other_settings(tmp_path):
    record = tmp_path / "reproduce_paper.json"
    reproduce.check_recorded_settings(record, {"overrides": ["runtime.threads=1"], "smoke": True})
    reproduce.check_recorded_settings(record, {"overrides": ["runtime.threads=1"], "smoke": True})  # the same: fine
    with pytest.raises(ConfigError) as error:
        reproduce.check_recorded_settings(record, {"overrides": ["optim.lr=0.5"], "smoke": True})
    assert str(error.value) == (
        f"{tmp_path} holds runs made with {{'overrides': ['runtime.threads=1'], 'smoke': True}}, not "
        f"{{'overrides': ['optim.lr=0.5'], 'smoke': True}} ({record}): re-run with those, or pass --root DIR for the "
        "new settings"
    )


def test_a_missing_resnetv1c_backbone_names_mmsegmentations_weights(tmp_path):
    from emanet.cli import compose_config

    cfg = compose_config("train", ["experiment=cityscapes_mmseg_r50", f"data_root={tmp_path}"])
    assert reproduce.backbone_problems(cfg) == [
        f"missing: {tmp_path / 'pretrained' / 'resnet50_v1c.pth'} (model.backbone.pretrained): save mmsegmentation's "
        "ImageNet ResNetV1c-50 (open-mmlab://resnet50_v1c) there (docs/models.md, \"mmsegmentation's EMANet\")"
    ]
    (tmp_path / "pretrained").mkdir()
    (tmp_path / "pretrained" / "resnet50_v1c.pth").write_bytes(b"")
    assert reproduce.backbone_problems(cfg) == []
