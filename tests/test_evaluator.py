"""Inference modes and multi-scale + flip against direct reference computations."""

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from emanet.cli import compose_config
from emanet.data.classes import VOC_CLASSES
from emanet.data.palette import save_label_png
from emanet.data.segmentation import SegmentationDataset
from emanet.engine.amp import AmpSettings
from emanet.engine.evaluator import Inference, evaluate, predict, window_starts
from emanet.engine.metrics import confusion_matrix
from emanet.engine.runtime import size_grouped_batches
from emanet.errors import ConfigError


def small_network(kernel: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, kernel, padding=kernel // 2), nn.ReLU(), nn.Conv2d(8, 5, 1)
    ).eval()


def test_multi_scale_flip_matches_a_direct_reference():
    model = small_network()
    torch.manual_seed(1)
    images = torch.randn(2, 3, 21, 30)
    scales = [0.5, 1.0, 1.75]
    probabilities, single = predict(model, images, scales, flip=True)

    for b in range(2):
        image = images[b : b + 1]
        total = torch.zeros(1, 5, 21, 30)
        for scale in scales:
            size = (round(21 * scale), round(30 * scale))
            resized = image if scale == 1.0 else F.interpolate(image, size, mode="bilinear", align_corners=False)
            for mirrored in (False, True):
                x = torch.flip(resized, dims=[3]) if mirrored else resized
                with torch.no_grad():
                    logits = model(x)
                if mirrored:
                    logits = torch.flip(logits, dims=[3])
                logits = F.interpolate(logits, (21, 30), mode="bilinear", align_corners=False)
                total += torch.softmax(logits, dim=1)
        torch.testing.assert_close(probabilities[b : b + 1], total / 6)
    with torch.no_grad():
        torch.testing.assert_close(single, model(images))


def test_evaluate_fills_both_confusion_matrices_from_the_predictions_and_skips_left_out_batches():
    model = small_network()
    torch.manual_seed(2)
    images, labels = torch.randn(3, 3, 12, 14), torch.randint(0, 5, (3, 12, 14))
    labels[0, :2] = 255
    batches = [{"image": images[:2], "label": labels[:2]}, None, {"image": images[2:], "label": labels[2:]}]
    scales = [0.75, 1.0, 1.5]
    result = evaluate(model, batches, 5, scales, True, torch.device("cpu"), progress=False)
    probabilities, single_logits = predict(model, images, scales, flip=True)
    assert torch.equal(result.confusion, confusion_matrix(probabilities.argmax(1), labels, 5))
    assert torch.equal(result.single_scale_confusion, confusion_matrix(single_logits.argmax(1), labels, 5))
    assert not torch.equal(result.single_scale_confusion, result.confusion)
    assert result.num_images == 3 and int(result.confusion.sum()) == 3 * 12 * 14 - 2 * 14
    # Without the unflipped scale-1.0 pass there is no single-scale result; with it alone, nothing extra.
    for scales, flip in (([0.75, 1.5], True), ([1.0], False)):
        other = evaluate(model, batches, 5, scales, flip, torch.device("cpu"), progress=False)
        assert other.single_scale_confusion is None


class RecordingNetwork(nn.Module):
    """small_network() that records the batch and window sizes and memory format of its inputs
    and its output dtype, pass by pass. ``global_context``: each window's mean logits added
    to every pixel, as a network with global attention sees the whole window (padding too)."""

    def __init__(self, global_context: bool = False):
        super().__init__()
        self.network = small_network()
        self.global_context = global_context
        self.channels_last_inputs, self.output_dtypes, self.batch_sizes, self.window_sizes = [], [], [], []

    def forward(self, x):
        self.batch_sizes.append(x.shape[0])
        self.window_sizes.append(tuple(x.shape[-2:]))
        self.channels_last_inputs.append(x.is_contiguous(memory_format=torch.channels_last))
        logits = self.network(x)
        if self.global_context:
            logits = logits + logits.mean(dim=(2, 3), keepdim=True)
        self.output_dtypes.append(logits.dtype)
        return logits


@pytest.mark.parametrize("inference", [Inference("whole"), Inference("slide", crop_size=16, stride=12)])
def test_bfloat16_channels_last_evaluation_runs_the_network_so_and_matches_float32(inference):
    model = RecordingNetwork()
    torch.manual_seed(3)
    batches = [{"image": torch.randn(2, 3, 21, 30), "label": torch.randint(0, 5, (2, 21, 30)), "id": ["a", "b"]}]
    predictions = {}
    for name, amp in [("float32", AmpSettings()), ("bfloat16", AmpSettings(torch.bfloat16, channels_last=True))]:
        model.channels_last_inputs.clear(), model.output_dtypes.clear(), model.batch_sizes.clear()
        result = evaluate(
            model, batches, 5, [0.75, 1.0], True, torch.device("cpu"), progress=False, inference=inference,
            on_prediction=lambda batch, prediction, name=name: predictions.__setitem__(name, prediction), amp=amp,
        )
        assert int(result.confusion.sum()) == 2 * 21 * 30
        expected_dtype = torch.float32 if name == "float32" else torch.bfloat16
        # One pass per scale: 2 images and their mirrors, times the windows when sliding
        # (16 x 22 at scale 0.75: 1 x 2 windows of 16; 21 x 30: 2 x 3 windows, in passes
        # of at most 12 crops).
        assert model.batch_sizes == ([4, 4] if inference.mode == "whole" else [4 * 2, 4 * 3, 4 * 3])
        assert set(model.output_dtypes) == {expected_dtype}
        assert set(model.channels_last_inputs) == {name == "bfloat16"}
    # bfloat16 keeps 8 significant bits: only pixels whose two best classes were nearly
    # tied may change class.
    agreement = (predictions["float32"] == predictions["bfloat16"]).float().mean().item()
    assert agreement > 0.97


def test_probabilities_are_float32_under_bfloat16_autocast():
    model = small_network()
    torch.manual_seed(4)
    images = torch.randn(1, 3, 21, 30)
    reference, _ = predict(model, images, [0.5, 1.0], flip=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        probabilities, single = predict(model, images, [0.5, 1.0], flip=True)
    assert probabilities.dtype == torch.float32 and single.dtype == torch.float32
    torch.testing.assert_close(probabilities.sum(1), torch.ones(1, 21, 30))
    torch.testing.assert_close(probabilities, reference, atol=2e-2, rtol=0)


def test_window_starts_cover_the_image_and_end_flush():
    assert window_starts(70, 32, 20) == [0, 20, 38]
    assert window_starts(32, 32, 20) == [0]
    assert window_starts(60, 32, 28) == [0, 28]


def test_sliding_window_equals_whole_image_for_a_pointwise_network():
    model = small_network(kernel=1)  # each output pixel depends on its input pixel only
    torch.manual_seed(2)
    images = torch.randn(2, 3, 40, 70)
    with torch.no_grad():
        whole = Inference("whole")(model, images)
        # overlapping, tiling, crop > image, [height, width] windows (one wider than the image)
        for crop, stride in [(32, 20), (32, 32), (96, 50), ((16, 48), (10, 30)), ((32, 96), (20, 60))]:
            torch.testing.assert_close(Inference("slide", crop, stride)(model, images), whole)
    # A stride that would leave gaps is refused with the config, before any inference.
    with pytest.raises(ConfigError, match=r"^eval.stride=40 is larger than eval.crop_size=32: the windows would "):
        compose_config("train", ["eval.mode=slide", "eval.crop_size=32", "eval.stride=40"])
    with pytest.raises(ConfigError, match=r"^eval.stride=\[10,50\] is larger than eval.crop_size=\[16,48\]"):
        compose_config("train", ["eval.mode=slide", "eval.crop_size=[16,48]", "eval.stride=[10,50]"])


def test_windows_of_height_and_width_are_cut_where_the_offsets_say():
    model = RecordingNetwork()
    Inference("slide", (16, 48), (10, 30))(model, torch.randn(1, 3, 40, 70))
    # rows 0, 10, 20, 24 x columns 0, 22: eight 16x48 windows in one pass
    assert model.batch_sizes == [8] and model.window_sizes == [(16, 48)]


def mmseg_slide_windows(height, width, crop, stride):
    """The windows of mmsegmentation's EncoderDecoder.slide_inference (1.2.2), from its
    loops: grids = max(length - crop + stride - 1, 0) // stride + 1, each window cut at the
    image's end and moved back by up to a crop; no padding."""
    (crop_h, crop_w), (stride_h, stride_w) = crop, stride
    h_grids = max(height - crop_h + stride_h - 1, 0) // stride_h + 1
    w_grids = max(width - crop_w + stride_w - 1, 0) // stride_w + 1
    windows = []
    for h_idx in range(h_grids):
        for w_idx in range(w_grids):
            y1, x1 = h_idx * stride_h, w_idx * stride_w
            y2, x2 = min(y1 + crop_h, height), min(x1 + crop_w, width)
            windows.append((max(y2 - crop_h, 0), y2, max(x2 - crop_w, 0), x2))
    return windows


@pytest.mark.parametrize(("size", "crop", "stride"), [
    ((20, 50), (30, 24), (16, 16)),   # lower than a window: one row of windows of the image's height
    ((40, 70), (16, 48), (10, 30)),   # larger: the windows as with padding
    ((12, 10), (16, 16), (8, 8)),     # smaller both ways: the image alone
])
def test_unpadded_windows_are_mmsegmentations(size, crop, stride):
    images = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(6))
    network = RecordingNetwork(global_context=True)
    result = Inference("slide", crop, stride, pad_to_window=False)(network, images)
    windows = mmseg_slide_windows(*size, crop, stride)
    assert sorted(set(network.window_sizes)) == sorted({(y2 - y1, x2 - x1) for y1, y2, x1, x2 in windows})
    # their average of each window's logits over the pixels it covers
    summed = torch.zeros(1, 5, *size)
    counts = torch.zeros(1, 1, *size)
    with torch.no_grad():
        for y1, y2, x1, x2 in windows:
            summed[..., y1:y2, x1:x2] += network(images[..., y1:y2, x1:x2])
            counts[..., y1:y2, x1:x2] += 1
    torch.testing.assert_close(result, summed / counts)
    if size[0] < crop[0]:  # padded windows see other pixels: another result
        padded = Inference("slide", crop, stride, pad_to_window=True)(network, images)
        assert (padded - result).abs().max() > 1e-3


def test_sliding_window_passes_hold_at_most_crops_per_pass_and_give_the_same_logits():
    model = RecordingNetwork()  # 3x3 convolutions: the overlaps matter
    torch.manual_seed(5)
    images = torch.randn(2, 3, 40, 70)  # windows of 32 every 20 pixels: 2 x 3 per image
    results = {}
    with torch.no_grad():
        for crops_per_pass, passes in [(12, [12]), (5, [4, 4, 4]), (1, [2] * 6)]:
            model.batch_sizes.clear()
            results[crops_per_pass] = Inference("slide", 32, 20, crops_per_pass)(model, images)
            assert model.batch_sizes == passes  # never fewer than one window of each image
    torch.testing.assert_close(results[5], results[12])
    torch.testing.assert_close(results[1], results[12])


def test_release_mode_pads_to_one_mod_eight_and_crops_back():
    seen = []

    class Spy(nn.Module):
        def forward(self, x):
            seen.append(x)
            return x[:, :2] * 2

    images = torch.randn(1, 3, 30, 45)
    logits = Inference("release")(Spy(), images)
    assert seen[0].shape[-2:] == (33, 49)  # 33 = 4 * 8 + 1, 49 = 6 * 8 + 1
    assert torch.equal(seen[0][..., :30, :45], images) and seen[0][..., 30:, :].abs().sum() == 0
    assert torch.equal(logits, images[:, :2] * 2)
    seen.clear()
    Inference("release")(Spy(), torch.randn(1, 3, 33, 41))
    assert seen[0].shape[-2:] == (33, 41)  # already 1 mod 8: unchanged


def test_eval_batches_group_images_of_equal_size(tmp_path):
    for folder in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (tmp_path / folder).mkdir(parents=True)
    sizes = {"a": (6, 5), "b": (5, 6), "c": (6, 5), "d": (6, 5), "e": (5, 6)}
    for name, (width, height) in sizes.items():
        Image.fromarray(np.zeros((height, width, 3), dtype=np.uint8)).save(tmp_path / "JPEGImages" / f"{name}.jpg")
        save_label_png(np.zeros((height, width), dtype=np.uint8), tmp_path / "SegmentationClass" / f"{name}.png")
    (tmp_path / "ImageSets/Segmentation/val.txt").write_text("\n".join(sizes))
    dataset = SegmentationDataset(tmp_path, "val", VOC_CLASSES)
    assert size_grouped_batches(dataset, range(5), 2) == [[0, 2], [3], [1, 4]]
    assert size_grouped_batches(dataset, [1, 2, 3], 1) == [[1], [2], [3]]


def test_prediction_panels_pass_over_samples_that_were_left_out():
    from omegaconf import OmegaConf

    from emanet.engine.evaluate import log_prediction_images

    class Writer:
        def __init__(self):
            self.images = []

        def add_image(self, tag, panel, step, dataformats):
            self.images.append((tag, panel.shape, step))

    torch.manual_seed(0)
    good = {"image": torch.randn(3, 8, 10), "label": torch.randint(0, 3, (8, 10))}
    dataset = [None, good, None, good, good]  # what dataset.skip_bad returns for bad files
    cfg = OmegaConf.create({
        "dataset": {"mean": [0.5] * 3, "std": [0.25] * 3, "class_colors": None},
        "eval": {"mode": "whole", "crop_size": 4, "stride": 4, "crops_per_pass": 1, "align_corners": False,
                 "logits_align_corners": None, "pad_to_window": True},
    })
    writer = Writer()
    log_prediction_images(torch.nn.Conv2d(3, 3, 1), dataset, cfg, torch.device("cpu"), writer, 7, count=2)
    assert [(tag, step) for tag, _, step in writer.images] == [("val/prediction_0", 7), ("val/prediction_1", 7)]
    assert writer.images[0][1][0] == 8  # a panel of the 8-pixel-high image


def test_summary_line_names_the_protocol_and_the_run_directory(tmp_path, monkeypatch):
    from emanet.engine.evaluate import one_line_summary

    metrics = {
        "experiment": "demo", "mIoU": 87.951, "aAcc": 96.888, "single_scale": {"mIoU": 75.99},
        "eval": {"mode": "slide", "scales": [0.5, 1.0], "flip": True, "eval_stages": 3},
    }
    monkeypatch.chdir(tmp_path)
    assert one_line_summary(metrics, tmp_path / "runs" / "demo" / "d") == (
        "demo: mIoU 87.95 (MS+flip, slide, T=3), 75.99 single scale; aAcc 96.89; results in runs/demo/d"
    )
    single = {**metrics, "eval": {"mode": "release", "scales": [1.0], "flip": False, "eval_stages": 5}}
    del single["single_scale"]
    assert one_line_summary(single, Path("/elsewhere/run")) == (
        "demo: mIoU 87.95 (SS, release, T=5); aAcc 96.89; results in /elsewhere/run"
    )
