"""scripts/export.py: the ONNX export, its check against PyTorch, and running it with
onnxruntime (Segmenter.from_onnx, predict.py backend=onnxruntime)."""

import json
import os
import shutil

import numpy as np
import onnx
import pytest
from helpers import QUIET, run_entry_point, write_demo_run, write_photo
from omegaconf import OmegaConf
from PIL import Image

from emanet import Segmenter
from emanet import export as export_script
from emanet.engine import onnx_export
from emanet.engine.onnx_runtime import exported_from

DEMO_CLASSES = ["background", "disc", "ring", "square", "cross"]


def agreement(first: list[np.ndarray], second: list[np.ndarray]) -> float:
    """The share of pixels, over all images, on which two lists of masks agree."""
    same = sum(int((a == b).sum()) for a, b in zip(first, second, strict=True))
    return same / sum(a.size for a in first)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A demo run with random weights, exported by scripts/export.py as a user runs it."""
    run_dir = tmp_path_factory.mktemp("run")
    write_demo_run(run_dir)
    result = run_entry_point("scripts/export.py", f"checkpoint={run_dir}", cwd=run_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir, result


@pytest.fixture(scope="module")
def val_images(data_root):
    """The demo dataset's val images (conftest's data_root)."""
    voc = data_root / "demo" / "VOC2012"
    ids = (voc / "ImageSets" / "Segmentation" / "val.txt").read_text().split()
    return [voc / "JPEGImages" / f"{sample_id}.jpg" for sample_id in ids]


@pytest.mark.slow
def test_export_writes_a_checked_model_with_dynamic_sizes_and_its_metadata(exported):
    run_dir, result = exported
    path = run_dir / "export" / "model.onnx"
    assert f"wrote {path}" in result.stdout and "opset 18, T=3" in result.stdout

    model = onnx.load(path)
    onnx.checker.check_model(model, full_check=True)
    assert [(entry.domain, entry.version) for entry in model.opset_import if entry.domain == ""] == [("", 18)]
    (images,), (logits,) = model.graph.input, model.graph.output
    input_dims = images.type.tensor_type.shape.dim
    output_dims = logits.type.tensor_type.shape.dim
    assert (images.name, logits.name) == ("images", "logits")
    # N, H and W symbolic; the input's channels 3 and the output's classes 5
    assert [bool(dim.dim_param) for dim in input_dims] == [True, False, True, True] and input_dims[1].dim_value == 3
    assert [bool(dim.dim_param) for dim in output_dims] == [True, False, True, True] and output_dims[1].dim_value == 5
    metadata = {entry.key: entry.value for entry in model.metadata_props}
    assert metadata["experiment"] == "demo" and metadata["opset"] == "18"
    assert json.loads(metadata["class_names"]) == DEMO_CLASSES
    assert json.loads(metadata["palette"])[:2] == [[0, 0, 0], [128, 0, 0]]
    assert json.loads(metadata["mean"]) == [0.485, 0.456, 0.406]
    assert json.loads(metadata["std"]) == [0.229, 0.224, 0.225]
    assert json.loads(metadata["eval_stages"]) == 3 and json.loads(metadata["output_stride"]) == 8

    report = json.loads((run_dir / "export" / "export.json").read_text())
    sizes = [tuple(check["size"]) for check in report["checked"]]
    assert sizes == [(1, 64, 64), (1, 35, 53), (2, 49, 39)]  # the window, and two sizes not multiples of 8
    for check in report["checked"]:
        assert check["argmax_agreement"] >= 0.9999 and check["max_abs_logit_difference"] < 1e-4
        assert f"{check['max_abs_logit_difference']:.2e}" in result.stderr  # reported as it ran


@pytest.mark.slow
def test_from_onnx_predicts_as_pytorch_on_the_demo_val_images(exported, val_images):
    run_dir, _ = exported
    for protocol in (None, "ss", "ms_flip"):  # the run's (MS+flip in windows), single scale, MS+flip whole
        onnx_segmenter = Segmenter.from_onnx(run_dir / "export" / "model.onnx", eval=protocol)
        torch_segmenter = Segmenter.from_checkpoint(run_dir, eval=protocol, backend="pytorch")
        assert onnx_segmenter.backend == "onnxruntime" and onnx_segmenter.classes == DEMO_CLASSES
        assert OmegaConf.to_container(onnx_segmenter.cfg.eval) == {
            **OmegaConf.to_container(torch_segmenter.cfg.eval), "channels_last": False}

        masks = onnx_segmenter.predict_batch(val_images)

        expected = torch_segmenter.predict_batch(val_images)
        assert [mask.shape for mask in masks] == [mask.shape for mask in expected]
        assert agreement(masks, expected) >= 0.9999, protocol
        assert len(np.unique(np.concatenate([mask.ravel() for mask in expected]))) > 1


@pytest.mark.slow
def test_the_cpu_default_runs_the_saved_export_or_exports_a_changed_checkpoint_in_memory(exported, tmp_path):
    run_dir, _ = exported
    image = np.random.default_rng(1).integers(0, 256, (45, 70, 3), dtype=np.uint8)

    seg = Segmenter.from_checkpoint(run_dir, device="cpu")

    assert seg.backend == "onnxruntime" and seg.source == run_dir / "export" / "model.onnx"
    assert agreement([seg.predict(image)], [Segmenter.from_checkpoint(run_dir, backend="pytorch").predict(image)]) \
        >= 0.9999
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    os.utime(copy / "checkpoints" / "last.pt", ns=(1, 1))  # another checkpoint than the one exported
    rewritten = Segmenter.from_checkpoint(copy, device="cpu")
    assert rewritten.backend == "onnxruntime" and rewritten.source == (copy / "checkpoints" / "last.pt").resolve()
    np.testing.assert_array_equal(rewritten.predict(image), seg.predict(image))


def test_a_saved_export_serves_only_its_checkpoint_t_and_output_stride(tmp_path):
    cfg, _ = write_demo_run(tmp_path)
    checkpoint = tmp_path / "checkpoints" / "last.pt"
    stat = checkpoint.stat()
    metadata = {"checkpoint": str(checkpoint), "checkpoint_file": {"bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns},
                "eval_stages": 3, "output_stride": 8}
    assert exported_from(metadata, checkpoint, cfg)
    assert not exported_from({**metadata, "eval_stages": 5}, checkpoint, cfg)
    assert not exported_from({**metadata, "output_stride": 16}, checkpoint, cfg)
    assert not exported_from({**metadata, "checkpoint": str(tmp_path / "other.pt")}, checkpoint, cfg)
    os.utime(checkpoint, ns=(1, 1))
    assert not exported_from(metadata, checkpoint, cfg)


@pytest.mark.slow
def test_an_export_that_disagrees_is_refused_with_its_numbers_and_not_written(tmp_path, monkeypatch, capsys):
    write_demo_run(tmp_path)
    monkeypatch.setattr(onnx_export, "MIN_AGREEMENT", 1.01)  # no export can agree on more than every pixel

    with pytest.raises(SystemExit) as exit_status:
        export_script.main([f"checkpoint={tmp_path}"])

    assert exit_status.value.code == 1
    error = capsys.readouterr().err
    assert error.startswith(f"error: the ONNX export of {tmp_path / 'checkpoints' / 'last.pt'} does not agree")
    assert "1x64x64: max |logit difference| " in error and "classes agree on 100.0000% of pixels" in error
    assert not (tmp_path / "export").exists()


def test_export_arguments_are_checked_in_one_line(capsys):
    for arguments, message in [
        (["run"], "'run': expected one of checkpoint=..., eval_stages=..., output=..."),
        (["eval_stages=3"], "checkpoint=RUN is required"),
        (["checkpoint=x", "eval_stages=two"], "eval_stages=two: expected a whole number of EM iterations"),
        (["checkpoint=/nonexistent/run"], "checkpoint not found at /nonexistent/run"),
    ]:
        with pytest.raises(SystemExit) as exit_status:
            export_script.main(arguments)
        assert exit_status.value.code == 2
        assert capsys.readouterr().err.startswith(f"error: {message}")


@pytest.mark.slow
def test_predict_py_with_onnxruntime_writes_what_pytorch_writes(exported, tmp_path):
    run_dir, _ = exported
    photos = tmp_path / "photos"
    write_photo(photos / "a.png", 70, 90, seed=2)
    write_photo(photos / "b.jpg", 61, 83, seed=3)
    outputs = {}
    for backend in ("pytorch", "onnxruntime"):
        result = run_entry_point(
            "scripts/predict.py", f"checkpoint={run_dir}", f"input={photos}", f"backend={backend}", *QUIET,
            f"hydra.run.dir={tmp_path / backend}",
        )
        assert result.returncode == 0, result.stderr[-3000:]
        record = json.loads((tmp_path / backend / "predictions.json").read_text())
        assert record["backend"] == backend and record["eval"]["precision"] == "float32"
        outputs[backend] = []
        for name in ("a", "b"):
            with Image.open(tmp_path / backend / "predictions" / f"{name}.png") as png:
                outputs[backend].append(np.array(png))
    assert agreement(outputs["onnxruntime"], outputs["pytorch"]) >= 0.9999
