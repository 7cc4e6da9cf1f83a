"""The demo config end to end: train a few iterations, evaluate, and every promised file."""

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import TINY, compose_config, run_entry_point
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from emanet.data.demo import DEMO_CLASSES
from emanet.data.palette import colorize, save_label_png
from emanet.data.segmentation import SegmentationDataset
from emanet.engine.evaluate import evaluate_checkpoint
from emanet.engine.train import train
from emanet.errors import ConfigError, DatasetError

# TINY scored with the demo's own protocol (multi-scale + flip in windows, here at two
# scales) instead of eval=ss: what a demo run reports, its single-scale result alongside.
MULTI_SCALE = [*(override for override in TINY if override != "eval=ss"), "eval.scales=[0.75,1.0]"]


def trained_metrics(run_dir):
    """What the training in ``run_dir`` scored (its metrics.json)."""
    return json.loads((run_dir / "metrics.json").read_text())


@pytest.fixture(scope="module")
def multi_scale_run(tmp_path_factory):
    """A MULTI_SCALE training into a data_root of its own, which it fills: (its config, its
    directory, the metrics train() returned)."""
    data_root = tmp_path_factory.mktemp("data")
    run_dir = tmp_path_factory.mktemp("multi_scale_run")
    cfg = compose_config([*MULTI_SCALE, f"data_root={data_root}"])
    return cfg, run_dir, train(cfg, run_dir)


@pytest.mark.slow
def test_demo_run_writes_every_promised_file(multi_scale_run):
    cfg, run_dir, metrics = multi_scale_run
    data_root = Path(cfg.data_root)
    assert (data_root / "demo" / "VOC2012" / "ImageSets" / "Segmentation" / "train.txt").is_file()
    assert (run_dir / "config.yaml").is_file()
    assert f"data_root: {data_root}" in (run_dir / "config.yaml").read_text()  # resolved

    checkpoint = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert checkpoint["iteration"] == 6
    assert checkpoint["config"]["name"] == "demo"
    assert "head.ema.mu" in checkpoint["model"]

    saved = trained_metrics(run_dir)
    assert saved == metrics
    assert set(saved["per_class_IoU"]) == {"background", "disc", "ring", "square", "cross"}
    assert saved["eval"] == {
        "mode": "slide", "scales": [0.75, 1.0], "flip": True, "crop_size": 64, "stride": 48, "align_corners": False,
        "logits_align_corners": False, "pad_to_window": True,
        "eval_stages": 3, "num_images": 2, "output_stride": 8, "precision": "float32",
    }
    # mIoU is the mean of the per-class IoUs: the 2 val images hold every class.
    for scored in (saved, saved["single_scale"]):
        assert scored["mIoU"] == pytest.approx(np.mean(list(scored["per_class_IoU"].values())), abs=1e-9)
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


def test_training_lr_follows_poly_schedule(full_run):
    cfg = compose_config(TINY)
    events = EventAccumulator(str(full_run / "tensorboard"))
    events.Reload()
    lrs = {e.step: e.value for e in events.Scalars("train/lr")}
    # logged at step i (counted from 1, as the release does) is the lr of that step
    assert sorted(lrs) == [2, 4, 6]
    for step, lr in lrs.items():
        assert lr == pytest.approx(cfg.optim.lr * (1 - step / 6) ** 0.9, rel=1e-6, abs=1e-12)


@pytest.mark.slow
def test_evaluate_checkpoint_reproduces_training_metrics(multi_scale_run, tmp_path):
    trained, run_dir, metrics = multi_scale_run
    checkpoint = f"checkpoint={run_dir / 'checkpoints' / 'last.pt'}"
    cfg = compose_config([*MULTI_SCALE, f"data_root={trained.data_root}", checkpoint], "evaluate")
    evaluated = evaluate_checkpoint(cfg, tmp_path)
    assert evaluated["mIoU"] == metrics["mIoU"]
    assert evaluated["per_class_IoU"] == metrics["per_class_IoU"]
    assert evaluated["single_scale"]["mIoU"] == metrics["single_scale"]["mIoU"]
    assert json.loads((tmp_path / "metrics.json").read_text())["iteration"] == 6


@pytest.mark.slow
@pytest.mark.parametrize("given", ["run directory", "checkpoints folder"])
def test_a_run_directory_stands_for_its_newest_checkpoint(full_run, data_root, tmp_path, given):
    run_dir, metrics = full_run, trained_metrics(full_run)
    path = run_dir if given == "run directory" else run_dir / "checkpoints"
    evaluated = evaluate_checkpoint(
        compose_config([*TINY, f"data_root={data_root}", f"checkpoint={path}"], "evaluate"), tmp_path
    )
    assert evaluated["mIoU"] == metrics["mIoU"]
    assert evaluated["checkpoint"] == str(run_dir.resolve() / "checkpoints" / "last.pt")


@pytest.mark.slow
def test_a_run_trained_with_an_auxiliary_head_evaluates_without_it(data_root, tmp_path):
    # The auxiliary head is trained, checkpointed for resuming, and left out of inference.
    overrides = [*TINY, f"data_root={data_root}"]
    metrics = train(compose_config([*overrides, "model.aux.weight=0.4"]), tmp_path / "train")
    checkpoint = tmp_path / "train" / "checkpoints" / "last.pt"
    weights = torch.load(checkpoint, weights_only=True)["model"]
    first = torch.load(tmp_path / "train" / "checkpoints" / "iter_0000004.pt", weights_only=True)["model"]
    assert not torch.equal(weights["aux_head.classifier.weight"], first["aux_head.classifier.weight"])
    (tmp_path / "eval").mkdir()
    evaluated = evaluate_checkpoint(
        compose_config([*overrides, f"checkpoint={checkpoint}"], "evaluate"), tmp_path / "eval"
    )
    assert evaluated["per_class_IoU"] == metrics["per_class_IoU"]


@pytest.mark.slow
def test_saved_predictions_are_the_evaluated_ones_and_batching_changes_nothing(full_run, data_root, tmp_path):
    metrics = trained_metrics(full_run)
    cfg = compose_config(
        [*TINY, f"data_root={data_root}", f"checkpoint={full_run / 'checkpoints' / 'last.pt'}",
         "eval.save_predictions=true", "eval.save_overlays=true", "eval.batch_size=2"], "evaluate",
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
    # The PNGs give back the reported metrics.
    intersection = np.diag(confusion)
    union = confusion.sum(0) + confusion.sum(1) - intersection
    present = union > 0
    assert 100 * np.mean(intersection[present] / union[present]) == pytest.approx(evaluated["mIoU"], abs=1e-6)
    assert 100 * intersection.sum() / confusion.sum() == pytest.approx(evaluated["aAcc"], abs=1e-6)


@pytest.mark.slow
def test_bfloat16_evaluation_is_recorded_and_close_to_float32(full_run, data_root, tmp_path):
    metrics = trained_metrics(full_run)
    checkpoint = f"checkpoint={full_run / 'checkpoints' / 'last.pt'}"
    cfg = compose_config(
        [*TINY, f"data_root={data_root}", checkpoint, "runtime.amp=bf16", "runtime.channels_last=true"], "evaluate"
    )
    assert cfg.eval.amp == "bf16" and cfg.eval.channels_last  # evaluation follows training's settings
    evaluated = evaluate_checkpoint(cfg, tmp_path)
    assert evaluated["eval"]["precision"] == "bfloat16"
    assert evaluated["mIoU"] == pytest.approx(metrics["mIoU"], abs=1.0)

    with pytest.raises(ConfigError, match=r"^eval.amp=fp8: expected one of off, bf16, fp16$"):  # before any work
        compose_config([*TINY, f"data_root={data_root}", checkpoint, "eval.amp=fp8"], "evaluate")


def test_eval_stages_override_is_used_and_recorded(full_run, data_root, tmp_path, monkeypatch):
    import emanet.models.ema as ema

    stages_used = []
    original = ema.em_iterations
    monkeypatch.setattr(
        ema, "em_iterations", lambda x, mu, stages, *a: stages_used.append(stages) or original(x, mu, stages, *a)
    )
    checkpoint = f"checkpoint={full_run / 'checkpoints' / 'last.pt'}"
    cfg = compose_config([*TINY, f"data_root={data_root}", checkpoint, "model.ema.eval_stages=5"], "evaluate")
    evaluated = evaluate_checkpoint(cfg, tmp_path)
    assert stages_used and set(stages_used) == {5}
    assert evaluated["eval"]["eval_stages"] == 5
    assert evaluated["eval"]["scales"] == [1.0] and evaluated["eval"]["flip"] is False
    assert "single_scale" not in evaluated


def test_ablation_protocol_evaluates_at_another_output_stride(full_run, data_root, tmp_path, monkeypatch):
    from emanet.models.resnet import ResNet

    strides = []
    original = ResNet.forward
    monkeypatch.setattr(ResNet, "forward", lambda self, x: strides.append(self.output_stride) or original(self, x))
    metrics = trained_metrics(full_run)
    cfg = compose_config(
        [*TINY, f"data_root={data_root}", f"checkpoint={full_run / 'checkpoints' / 'last.pt'}",
         "model.backbone.output_stride=16", "model.backbone.eval_output_stride=8"], "evaluate",
    )
    evaluated = evaluate_checkpoint(cfg, tmp_path)
    assert set(strides) == {8}
    assert evaluated["eval"]["output_stride"] == 8
    assert evaluated["mIoU"] == metrics["mIoU"]  # same weights, same stride as in training


@pytest.mark.slow
def test_a_checkpoint_in_a_sweep_folder_is_passed_without_quoting(full_run, data_root, tmp_path):
    # Sweep runs are named after their overrides: '=' and ',' are Hydra syntax.
    metrics = trained_metrics(full_run)
    sweep_run = tmp_path / "model.ema.train_stages=3,seed=0"
    shutil.copytree(full_run / "checkpoints", sweep_run / "checkpoints", symlinks=True)
    result = run_entry_point("evaluate.py", f"checkpoint={sweep_run / 'checkpoints' / 'last.pt'}", *TINY,
                             f"data_root={data_root}", f"hydra.run.dir={tmp_path / 'eval'}")
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["mIoU"] == metrics["mIoU"]


@pytest.mark.slow
def test_voc_experiment_composes_and_reports_missing_dataset(tmp_path):
    result = run_entry_point("train.py", "experiment=voc_emanet512", f"data_root={tmp_path}",
                             f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode == 2
    expected = f"error: dataset not found at {tmp_path / 'VOCdevkit' / 'VOC2012'}: see data/README.md"
    assert expected in result.stderr.splitlines()
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_voc_experiment_resolves_the_paper_recipe():
    cfg = compose_config(["experiment=voc_emanet512"])
    assert cfg.name == "voc_emanet512"
    assert cfg.dataset.name == "voc_aug" and cfg.dataset.crop_size == 513
    assert cfg.model.backbone.depth == 101 and cfg.model.backbone.output_stride == 8
    assert cfg.model.ema.channels == 512 and cfg.model.ema.num_bases == 64
    assert cfg.schedule.iterations == 30000 and cfg.schedule.batch_size == 16
    assert cfg.optim.lr == 0.009
    assert cfg.schedule.lr_update_every == 10 and cfg.loss.normalization == "all_pixels"
    for baseline in ("voc_fcn", "voc_deeplabv3", "voc_r50_ablation", "context_emanet512", "cocostuff10k_emanet512"):
        inherited = compose_config([f"experiment={baseline}"])
        assert (inherited.schedule.lr_update_every, inherited.loss.normalization) == (10, "all_pixels"), baseline


def test_psanet_is_evaluated_in_crop_sized_windows_unless_another_mode_is_named():
    # Its attention grid is fixed (33x33 for 513 crops): whole images would be squeezed onto it.
    assert compose_config(["experiment=voc_emanet512"]).eval.mode == "whole"
    for overrides in (["experiment=voc_psanet"], ["experiment=voc_psanet", "checkpoint=x", "eval=ss_slide"]):
        cfg = compose_config(overrides, "evaluate" if "checkpoint=x" in overrides else "train")
        assert (cfg.eval.mode, cfg.eval.crop_size, cfg.model.psa.attention_size) == ("slide", 513, 33)
    assert compose_config(["experiment=voc_psanet", "checkpoint=x", "eval=ss"], "evaluate").eval.mode == "whole"


@pytest.mark.slow
def test_the_eval_preset_named_on_the_command_line_is_the_one_that_runs(multi_scale_run, tmp_path):
    # The demo evaluates in windows (eval=ms_flip_slide); eval=release_ss must run the release's protocol.
    cfg, run_dir, _ = multi_scale_run
    tiny = [override for override in MULTI_SCALE if not override.startswith("eval.")]
    result = run_entry_point("evaluate.py", f"checkpoint={run_dir}", "eval=release_ss", *tiny,
                             f"data_root={cfg.data_root}", f"hydra.run.dir={tmp_path / 'eval'}")
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
    result = run_entry_point("evaluate.py", f"checkpoint={tmp_path / 'none.pt'}", f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode == 2
    assert f"error: checkpoint not found at {tmp_path / 'none.pt'}" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_split_without_labelled_pixels_is_refused_naming_it(full_run, data_root, tmp_path):
    root = tmp_path / "unlabelled"
    shutil.copytree(data_root / "demo" / "VOC2012", root)
    for label in (root / "SegmentationClass").glob("*.png"):
        save_label_png(np.full(np.array(Image.open(label)).shape, 255, dtype=np.uint8), label)
    overrides = [*TINY, f"data_root={data_root}", f"checkpoint={full_run}", "dataset.name=unlabelled",
                 f"dataset.root={root}", "dataset.class_names=[a,b,c,d,e]"]
    (tmp_path / "eval").mkdir()
    message = rf"{root}: split 'val' has no labelled pixels to score \(every label is dataset.ignore_index=255"
    with pytest.raises(DatasetError, match=message):
        evaluate_checkpoint(compose_config(overrides, "evaluate"), tmp_path / "eval")
    assert not (tmp_path / "eval" / "metrics.json").exists()
