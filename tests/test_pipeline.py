"""The demo config end to end: train a few iterations, evaluate, and every promised file."""

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from emanet.data.demo import DEMO_CLASSES
from emanet.data.palette import colorize, save_label_png
from emanet.data.segmentation import SegmentationDataset
from emanet.engine.evaluate import evaluate_checkpoint
from emanet.engine.train import train
from emanet.errors import ConfigError, DatasetError

REPO = Path(__file__).resolve().parents[1]
CONFIGS = str(REPO / "configs")

TINY = [
    "schedule.iterations=6",
    "schedule.batch_size=4",
    "schedule.log_every=2",
    "schedule.checkpoint_every=3",
    "dataset.generate.num_train=8",
    "dataset.generate.num_val=3",
    "eval.scales=[0.75,1.0]",
    "runtime.num_workers=0",
    "runtime.progress=false",
]


def compose_config(config_name: str, overrides: list[str]):
    with initialize_config_dir(config_dir=CONFIGS, version_base=None):
        return compose(config_name=config_name, overrides=overrides)


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    data_root = tmp_path_factory.mktemp("data")
    run_dir = tmp_path_factory.mktemp("run")
    cfg = compose_config("train", [*TINY, f"data_root={data_root}"])
    metrics = train(cfg, run_dir)
    return cfg, run_dir, metrics, data_root


@pytest.mark.slow
def test_demo_run_writes_every_promised_file(demo_run):
    cfg, run_dir, metrics, data_root = demo_run
    assert (data_root / "demo" / "VOC2012" / "ImageSets" / "Segmentation" / "train.txt").is_file()
    assert (run_dir / "config.yaml").is_file()
    assert "data_root: " + str(data_root) in (run_dir / "config.yaml").read_text()  # resolved

    checkpoint = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert checkpoint["iteration"] == 6
    assert checkpoint["config"]["name"] == "demo"
    assert "head.ema.mu" in checkpoint["model"]

    saved = json.loads((run_dir / "metrics.json").read_text())
    assert saved == metrics
    assert set(saved["per_class_IoU"]) == {"background", "disc", "ring", "square", "cross"}
    assert saved["eval"] == {
        "mode": "slide", "scales": [0.75, 1.0], "flip": True, "crop_size": 64, "stride": 48, "align_corners": False,
        "logits_align_corners": False, "pad_to_window": True,
        "em_iterations": 3, "num_images": 3, "output_stride": 8, "precision": "float32",
    }
    assert 0.0 <= saved["mIoU"] <= 100.0 and 0.0 <= saved["aAcc"] <= 100.0
    assert set(saved["single_scale"]) >= {"mIoU", "aAcc", "per_class_IoU"}

    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    scalars = events.Tags()["scalars"]
    assert {"train/loss", "train/lr", "val/mIoU", "val/mIoU_single_scale"} <= set(scalars)
    assert [e.step for e in events.Scalars("train/loss")] == [2, 4, 6]
    assert events.Scalars("val/mIoU")[0].value == pytest.approx(saved["mIoU"], abs=1e-4)
    # image | ground truth | prediction, the ground truth in VOC colours
    panel = np.array(Image.open(io.BytesIO(events.Images("val/prediction_0")[0].encoded_image_string)))
    val = SegmentationDataset(cfg.dataset.root, "val", DEMO_CLASSES)
    label = val.load(0)[1]
    height, width = label.shape
    assert panel.shape == (height, 3 * width, 3)
    assert np.array_equal(panel[:, width : 2 * width], colorize(label))


def test_training_lr_follows_poly_schedule(demo_run):
    cfg, run_dir, _, _ = demo_run
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    lrs = {e.step: e.value for e in events.Scalars("train/lr")}
    # logged at step i (counted from 1, as the release does) is the lr of that step
    assert sorted(lrs) == [2, 4, 6]
    for step, lr in lrs.items():
        assert lr == pytest.approx(cfg.optim.lr * (1 - step / 6) ** 0.9, rel=1e-6, abs=1e-12)


def test_evaluate_checkpoint_reproduces_training_metrics(demo_run, tmp_path):
    _, run_dir, metrics, data_root = demo_run
    cfg = compose_config(
        "evaluate", [*TINY, f"data_root={data_root}", f"checkpoint={run_dir / 'checkpoints' / 'last.pt'}"]
    )
    evaluated = evaluate_checkpoint(cfg, tmp_path)
    assert evaluated["mIoU"] == metrics["mIoU"]
    assert evaluated["per_class_IoU"] == metrics["per_class_IoU"]
    assert evaluated["single_scale"]["mIoU"] == metrics["single_scale"]["mIoU"]
    assert json.loads((tmp_path / "metrics.json").read_text())["iteration"] == 6


@pytest.mark.parametrize("given", ["run directory", "checkpoints folder"])
def test_a_run_directory_stands_for_its_newest_checkpoint(demo_run, tmp_path, given):
    _, run_dir, metrics, data_root = demo_run
    path = run_dir if given == "run directory" else run_dir / "checkpoints"
    evaluated = evaluate_checkpoint(
        compose_config("evaluate", [*TINY, f"data_root={data_root}", f"checkpoint={path}"]), tmp_path
    )
    assert evaluated["mIoU"] == metrics["mIoU"]
    assert evaluated["checkpoint"] == str(run_dir.resolve() / "checkpoints" / "last.pt")


@pytest.mark.slow
def test_a_run_trained_with_an_auxiliary_head_evaluates_without_it(demo_run, tmp_path):
    # The auxiliary head is trained, checkpointed for resuming, and left out of inference.
    _, _, _, data_root = demo_run
    overrides = [*TINY, f"data_root={data_root}", "eval=ss"]
    metrics = train(compose_config("train", [*overrides, "model.aux.weight=0.4"]), tmp_path / "train")
    checkpoint = tmp_path / "train" / "checkpoints" / "last.pt"
    weights = torch.load(checkpoint, weights_only=True)["model"]
    first = torch.load(tmp_path / "train" / "checkpoints" / "iter_0000003.pt", weights_only=True)["model"]
    assert not torch.equal(weights["aux_head.classifier.weight"], first["aux_head.classifier.weight"])
    (tmp_path / "eval").mkdir()
    evaluated = evaluate_checkpoint(
        compose_config("evaluate", [*overrides, f"checkpoint={checkpoint}"]), tmp_path / "eval"
    )
    assert evaluated["per_class_IoU"] == metrics["per_class_IoU"]


def test_saved_predictions_are_the_evaluated_ones_and_batching_changes_nothing(demo_run, tmp_path):
    _, run_dir, metrics, data_root = demo_run
    cfg = compose_config(
        "evaluate",
        [*TINY, f"data_root={data_root}", f"checkpoint={run_dir / 'checkpoints' / 'last.pt'}",
         "eval.save_predictions=true", "eval.save_overlays=true", "eval.batch_size=2"],
    )
    evaluated = evaluate_checkpoint(cfg, tmp_path)
    assert evaluated["per_class_IoU"] == metrics["per_class_IoU"]
    val = SegmentationDataset(cfg.dataset.root, "val", DEMO_CLASSES)
    confusion = np.zeros((5, 5), dtype=np.int64)
    for index, sample_id in enumerate(val.ids):
        with Image.open(tmp_path / "predictions" / f"{sample_id}.png") as png:
            assert png.mode == "P"
            prediction = np.array(png)
        label = val.load(index)[1]
        assert prediction.shape == label.shape
        valid = label != 255
        np.add.at(confusion, (label[valid], prediction[valid]), 1)
        assert (tmp_path / "overlays" / f"{sample_id}.jpg").is_file()
    # The PNGs give back the reported metric.
    intersection = np.diag(confusion)
    union = confusion.sum(0) + confusion.sum(1) - intersection
    present = union > 0
    assert 100 * np.mean(intersection[present] / union[present]) == pytest.approx(evaluated["mIoU"], abs=1e-6)


@pytest.mark.slow
def test_bfloat16_evaluation_is_recorded_and_close_to_float32(demo_run, tmp_path):
    _, run_dir, metrics, data_root = demo_run
    checkpoint = f"checkpoint={run_dir / 'checkpoints' / 'last.pt'}"
    cfg = compose_config("evaluate", [*TINY, f"data_root={data_root}", checkpoint, "runtime.amp=bf16",
                                      "runtime.channels_last=true"])
    assert cfg.eval.amp == "bf16" and cfg.eval.channels_last  # evaluation follows training's settings
    evaluated = evaluate_checkpoint(cfg, tmp_path)
    assert evaluated["eval"]["precision"] == "bfloat16"
    assert evaluated["mIoU"] == pytest.approx(metrics["mIoU"], abs=1.0)

    cfg = compose_config("evaluate", [*TINY, f"data_root={data_root}", checkpoint, "eval.amp=fp8"])
    (tmp_path / "fp8").mkdir()
    with pytest.raises(ConfigError, match=r"eval.amp must be one of \['bf16', 'fp16', 'off'\], got 'fp8'"):
        evaluate_checkpoint(cfg, tmp_path / "fp8")
    assert not any((tmp_path / "fp8").iterdir())  # refused before anything was written


def test_eval_stages_override_is_used_and_recorded(demo_run, tmp_path, monkeypatch):
    import emanet.models.ema as ema

    stages_used = []
    original = ema.em_iterations
    monkeypatch.setattr(
        ema, "em_iterations", lambda x, mu, stages, *a: stages_used.append(stages) or original(x, mu, stages, *a)
    )
    _, run_dir, _, data_root = demo_run
    overrides = [o for o in TINY if not o.startswith("eval.")]
    cfg = compose_config(
        "evaluate",
        [*overrides, f"data_root={data_root}", f"checkpoint={run_dir / 'checkpoints' / 'last.pt'}",
         "model.ema.eval_stages=5", "eval=ss"],
    )
    evaluated = evaluate_checkpoint(cfg, tmp_path)
    assert stages_used and set(stages_used) == {5}
    assert evaluated["eval"]["em_iterations"] == 5
    assert evaluated["eval"]["scales"] == [1.0] and evaluated["eval"]["flip"] is False
    assert "single_scale" not in evaluated


def test_ablation_protocol_evaluates_at_another_output_stride(demo_run, tmp_path, monkeypatch):
    from emanet.models.resnet import ResNet

    strides = []
    original = ResNet.forward
    monkeypatch.setattr(ResNet, "forward", lambda self, x: strides.append(self.output_stride) or original(self, x))
    _, run_dir, metrics, data_root = demo_run
    cfg = compose_config(
        "evaluate",
        [*TINY, f"data_root={data_root}", f"checkpoint={run_dir / 'checkpoints' / 'last.pt'}",
         "model.backbone.output_stride=16", "model.backbone.eval_output_stride=8"],
    )
    evaluated = evaluate_checkpoint(cfg, tmp_path)
    assert set(strides) == {8}
    assert evaluated["eval"]["output_stride"] == 8
    assert evaluated["mIoU"] == metrics["mIoU"]  # same weights, same stride as in training


def run_cli(*args, cwd=REPO):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


@pytest.mark.slow
def test_a_checkpoint_in_a_sweep_folder_is_passed_without_quoting(demo_run, tmp_path):
    # Sweep runs are named after their overrides: '=' and ',' are Hydra syntax.
    _, run_dir, metrics, data_root = demo_run
    sweep_run = tmp_path / "model.ema.train_stages=3,seed=0"
    shutil.copytree(run_dir / "checkpoints", sweep_run / "checkpoints", symlinks=True)
    result = run_cli("evaluate.py", f"checkpoint={sweep_run / 'checkpoints' / 'last.pt'}", *TINY,
                     f"data_root={data_root}", f"hydra.run.dir={tmp_path / 'eval'}")
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["mIoU"] == metrics["mIoU"]


@pytest.mark.slow
def test_voc_experiment_composes_and_reports_missing_dataset(tmp_path):
    result = run_cli("train.py", "experiment=voc_emanet512", f"data_root={tmp_path}",
                     f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode == 2
    expected = f"error: dataset not found at {tmp_path / 'VOCdevkit' / 'VOC2012'}: see data/README.md"
    assert expected in result.stderr.splitlines()
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_voc_experiment_resolves_the_paper_recipe():
    cfg = compose_config("train", ["experiment=voc_emanet512"])
    assert cfg.name == "voc_emanet512"
    assert cfg.dataset.name == "voc_aug" and cfg.dataset.crop_size == 513
    assert cfg.model.backbone.depth == 101 and cfg.model.backbone.output_stride == 8
    assert cfg.model.ema.channels == 512 and cfg.model.ema.num_bases == 64
    assert cfg.schedule.iterations == 30000 and cfg.schedule.batch_size == 16
    assert cfg.optim.lr == 0.009
    assert cfg.schedule.lr_update_every == 10 and cfg.loss.normalization == "all_pixels"
    for baseline in ("voc_fcn", "voc_deeplabv3", "voc_r50_ablation", "context_emanet512", "cocostuff10k_emanet512"):
        inherited = compose_config("train", [f"experiment={baseline}"])
        assert (inherited.schedule.lr_update_every, inherited.loss.normalization) == (10, "all_pixels"), baseline


def test_psanet_is_evaluated_in_crop_sized_windows_unless_another_mode_is_named():
    # Its attention grid is fixed (33x33 for 513 crops): whole images would be squeezed onto it.
    assert compose_config("train", ["experiment=voc_emanet512"]).eval.mode == "whole"
    for overrides in (["experiment=voc_psanet"], ["experiment=voc_psanet", "checkpoint=x", "eval=ss_slide"]):
        cfg = compose_config("evaluate" if "checkpoint=x" in overrides else "train", overrides)
        assert (cfg.eval.mode, cfg.eval.crop_size, cfg.model.psa.attention_size) == ("slide", 513, 33)
    assert compose_config("evaluate", ["experiment=voc_psanet", "checkpoint=x", "eval=ss"]).eval.mode == "whole"


@pytest.mark.slow
def test_the_eval_preset_named_on_the_command_line_is_the_one_that_runs(demo_run, tmp_path):
    # The demo evaluates in windows (eval=ms_flip_slide); eval=release_ss must run the release's protocol.
    _, run_dir, _, data_root = demo_run
    tiny = [override for override in TINY if not override.startswith("eval.")]
    result = run_cli("evaluate.py", f"checkpoint={run_dir}", "eval=release_ss", *tiny, f"data_root={data_root}",
                     f"hydra.run.dir={tmp_path / 'eval'}")
    assert result.returncode == 0, result.stderr
    output = (result.stdout + result.stderr).splitlines()
    notes = [line for line in output if "eval=release_ss: " in line]
    assert len(notes) == 1 and notes[0].endswith(
        "eval=release_ss: mode release instead of experiment=demo's own eval=ms_flip_slide (mode slide)"
    )
    saved = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert (saved["eval"]["mode"], saved["eval"]["crop_size"], saved["eval"]["scales"]) == ("release", None, [1.0])
    assert any(line.endswith(f"demo: mIoU {saved['mIoU']:.2f} (SS, release, T=3); aAcc {saved['aAcc']:.2f}; "
                             f"results in {tmp_path / 'eval'}") for line in output)


@pytest.mark.slow
def test_evaluate_reports_missing_checkpoint(tmp_path):
    result = run_cli("evaluate.py", f"checkpoint={tmp_path / 'none.pt'}", f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode == 2
    assert f"error: checkpoint not found at {tmp_path / 'none.pt'}" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_split_without_labelled_pixels_is_refused_naming_it(demo_run, tmp_path):
    _, run_dir, _, data_root = demo_run
    root = tmp_path / "unlabelled"
    shutil.copytree(data_root / "demo" / "VOC2012", root)
    for label in (root / "SegmentationClass").glob("*.png"):
        save_label_png(np.full(np.array(Image.open(label)).shape, 255, dtype=np.uint8), label)
    overrides = [*TINY, f"data_root={data_root}", f"checkpoint={run_dir}", "dataset.name=unlabelled",
                 f"dataset.root={root}", "dataset.class_names=[a,b,c,d,e]"]
    (tmp_path / "eval").mkdir()
    message = rf"{root}: split 'val' has no labelled pixels to score \(every label is dataset.ignore_index=255"
    with pytest.raises(DatasetError, match=message):
        evaluate_checkpoint(compose_config("evaluate", overrides), tmp_path / "eval")
    assert not (tmp_path / "eval" / "metrics.json").exists()
