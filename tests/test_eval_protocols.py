"""Evaluation protocols: the preset named on the command line sets the mode that runs, an
experiment's own eval keys are reported where they win, and the rescaling convention of
multi-scale evaluation (eval.align_corners) against a direct bilinear reference."""

import math
from functools import cache

import numpy as np
import pytest
import torch
from helpers import bilinear_reference, experiment_overrides
from tests_paths import REPO
from torch import nn

from emanet.cli import compose_config, eval_preset_note
from emanet.engine.evaluator import Inference, logits_at_scale, scaled_size

EXPERIMENTS = sorted(path.stem for path in (REPO / "configs" / "experiment").glob("*.yaml"))
PRESETS = sorted(path.stem for path in (REPO / "configs" / "eval").glob("*.yaml") if not path.stem.startswith("_"))


@cache
def preset_alone(preset: str) -> dict:
    """The eval config of a preset with no experiment on top."""
    return dict(compose_config("evaluate", [f"eval={preset}", "~experiment", "name=plain", "checkpoint=x"]).eval)


def eval_keys_set_by(experiment: str) -> dict:
    """The eval keys an experiment sets itself (beyond choosing a preset)."""
    ran = compose_config("evaluate", [*experiment_overrides(experiment), "eval=ms_flip", "checkpoint=x"]).eval
    return {key: value for key, value in ran.items() if preset_alone("ms_flip")[key] != value}


@pytest.mark.slow
def test_every_preset_names_its_own_mode():
    assert {preset: preset_alone(preset)["mode"] for preset in PRESETS} == {
        "ms_flip": "whole", "ms_flip_slide": "slide", "release_ss": "release", "ss": "whole", "ss_slide": "slide",
    }


@pytest.mark.slow
@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_the_preset_on_the_command_line_sets_the_mode_for_every_experiment(experiment):
    for preset in PRESETS:
        cfg = compose_config("evaluate", [*experiment_overrides(experiment), f"eval={preset}", "checkpoint=x"]).eval
        expected = preset_alone(preset)
        ran = (cfg.mode, list(cfg.scales), cfg.flip)
        assert ran == (expected["mode"], expected["scales"], expected["flip"]), preset
    # A key on the command line wins over both the preset and the experiment.
    cfg = compose_config("evaluate", [*experiment_overrides(experiment), "eval=release_ss", "eval.mode=slide",
                                      "checkpoint=x"])
    assert cfg.eval.mode == "slide"


@pytest.mark.slow
def test_the_experiments_that_set_eval_keys_are_the_ones_below():
    # A new experiment that sets eval keys joins the precedence cases of the next test.
    assert {name: keys for name in EXPERIMENTS if (keys := eval_keys_set_by(name))} == {
        "cityscapes_emanet512": {"crop_size": [512, 1024], "stride": [341, 683]},
        "cityscapes_r50_emanet512": {"crop_size": [512, 1024], "stride": [341, 683]},
        **{name: {"crop_size": 769, "stride": 513, "pad_to_window": False, "logits_align_corners": True}
           for name in ("cityscapes_mmseg_r101", "cityscapes_mmseg_r50")},
        "cityscapes_mmseg_r101_512x1024": {"pad_to_window": False, "logits_align_corners": False},
        "cityscapes_mmseg_r50_512x1024": {"pad_to_window": False, "logits_align_corners": False},
        "demo": {"crop_size": 64, "stride": 48},
        "folder_emanet512": {"crop_size": 512},
        "voc_release": {"align_corners": True},
    }


@pytest.mark.slow
@pytest.mark.parametrize(("overrides", "note"), [
    (["eval=ss_slide"],
     "eval=ss_slide: experiment=demo's eval.crop_size=64, eval.stride=48 win over the preset's 513, 341 "
     "(pass eval.KEY=VALUE to change)"),
    (["eval=ms_flip_slide", "eval.stride=20"],
     "eval=ms_flip_slide: experiment=demo's eval.crop_size=64 wins over the preset's 513 (pass eval.KEY=VALUE to "
     "change)"),
    (["eval=release_ss"],
     "eval=release_ss: mode release instead of experiment=demo's own eval=ms_flip_slide (mode slide)"),
    (["eval=ms_flip_slide"], "eval=ms_flip_slide: experiment=demo's eval.crop_size=64, eval.stride=48 win over "
     "the preset's 513, 341 (pass eval.KEY=VALUE to change)"),
    (["eval=ss", "experiment=voc_psanet"],
     "eval=ss: mode whole instead of experiment=voc_psanet's own eval=ms_flip_slide (mode slide)"),
    (["experiment=voc_release", "eval=ms_flip"],
     "eval=ms_flip: experiment=voc_release's eval.align_corners=True wins over the preset's False (pass "
     "eval.KEY=VALUE to change); mode whole instead of experiment=voc_release's own eval=release_ss (mode release)"),
    (["experiment=cityscapes_emanet512", "eval=ss_slide"],
     "eval=ss_slide: experiment=cityscapes_emanet512's eval.crop_size=[512, 1024], eval.stride=[341, 683] win over "
     "the preset's "
     "513, 341 (pass eval.KEY=VALUE to change)"),
    # Nothing to say: no preset named, the experiment's own preset, keys that do not matter to the mode.
    (["experiment=demo"], None),
    (["experiment=voc_release", "eval=release_ss"], None),
    (["experiment=voc_emanet512", "eval=ss"], None),
    (["experiment=voc_psanet", "eval=ss_slide"], None),
    (["eval=ss", "eval.mode=slide", "eval.crop_size=64", "eval.stride=48"], None),
])
def test_a_run_says_in_one_line_where_the_experiment_wins_over_the_named_preset(overrides, note):
    assert eval_preset_note("evaluate", ["checkpoint=x", *overrides]) == note


class SizeRecorder(nn.Module):
    """The identity, recording the size of what it is given."""

    def __init__(self):
        super().__init__()
        self.sizes = []

    def forward(self, x):
        self.sizes.append(tuple(x.shape[-2:]))
        return x


@pytest.mark.parametrize(("align_corners", "expected_size"), [(True, (11, 13)), (False, (11, 14))])
def test_multi_scale_rescaling_follows_eval_align_corners(align_corners, expected_size):
    # 9 x 11 at scale 1.25 is 11.25 x 13.75: floored (the release's convention) or rounded.
    images = torch.randn(2, 3, 9, 11, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    network = SizeRecorder()
    logits = logits_at_scale(network, images, 1.25, flip=False, inference=Inference(align_corners=align_corners))
    assert network.sizes == [expected_size] and scaled_size(9, 11, 1.25, align_corners) == expected_size
    # The rescaled logits are resized back in float32 whatever the network ran in.
    for image, result in zip(images.numpy(), logits.numpy(), strict=True):
        rescaled = bilinear_reference(image, *expected_size, align_corners)
        np.testing.assert_allclose(result, bilinear_reference(rescaled, 9, 11, align_corners), rtol=1e-6, atol=2e-6)


def test_logits_go_back_with_eval_logits_align_corners_as_mmsegmentation_does():
    # mmsegmentation: the image rescaled with cv2 (half-pixel centres, sizes rounded), the
    # logits back to the image with the heads' align_corners (True in its 769x769 models).
    images = torch.randn(2, 3, 9, 11, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    network = SizeRecorder()
    inference = Inference(align_corners=False, logits_align_corners=True)
    logits = logits_at_scale(network, images, 1.25, flip=False, inference=inference)
    assert network.sizes == [(11, 14)]
    for image, result in zip(images.numpy(), logits.numpy(), strict=True):
        rescaled = bilinear_reference(image, 11, 14, align_corners=False)
        np.testing.assert_allclose(result, bilinear_reference(rescaled, 9, 11, align_corners=True), rtol=1e-6,
                                   atol=2e-6)
        assert np.abs(result - bilinear_reference(rescaled, 9, 11, align_corners=False)).max() > 1e-2


def test_the_two_conventions_give_different_multi_scale_logits():
    images = torch.randn(1, 3, 12, 12, generator=torch.Generator().manual_seed(1))
    aligned, centred = (
        logits_at_scale(SizeRecorder(), images, 0.5, flip=False, inference=Inference(align_corners=corners))
        for corners in (True, False)
    )
    assert (aligned - centred).abs().max() > 0.05


def test_scaled_sizes_are_at_least_one_pixel():
    assert scaled_size(1, 3, 0.5, True) == (1, 1) and scaled_size(1, 3, 0.4, False) == (1, 1)
    assert scaled_size(101, 101, 0.75, True) == (75, 75) == (math.floor(75.75),) * 2
    assert scaled_size(101, 101, 0.75, False) == (76, 76)
