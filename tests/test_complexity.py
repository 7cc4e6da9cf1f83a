"""Table 1's FLOPs, parameter and memory columns (counted on the meta device)."""

import json
import subprocess
import sys

import pytest
import torch
from tests_paths import REPO

from emanet.benchmarks.complexity import build, measure, saved_activation_bytes
from emanet.models.resnet import ResNet


@pytest.fixture(scope="module")
def rows():
    return {row["method"]: row for row in measure(513, with_memory=False)}


@pytest.mark.slow
@pytest.mark.parametrize(
    "method,tolerance",
    [("ResNet-101", 0.01), ("EMANet(256)", 0.01), ("EMANet(512)", 0.01),
     ("DeeplabV3", 0.05), ("DeeplabV3+", 0.05), ("PSANet", 0.05)],
)
def test_flops_and_params_match_the_paper(rows, method, tolerance):
    row = rows[method]
    assert row["flops_g"] == pytest.approx(row["paper_flops_g"], rel=tolerance)
    assert row["params_m"] == pytest.approx(row["paper_params_m"], rel=tolerance)


def test_emanet512_counts_its_layers_exactly_and_matches_the_paper_at_its_precision(rows):
    # Ours: the 3x3 conv in front of the unit (2048->512, BN) and the unit (1x1 with bias, the
    # 512x64 bases, 1x1 + BN), at 65x65 positions (513x513, output stride 8); the EM attention
    # costs two C x N x K products per iteration, three iterations, and one more to reconstruct.
    params = (2048 * 512 * 9 + 2 * 512) + (512 * 512 + 512) + 512 * 64 + (512 * 512 + 2 * 512)
    macs = 65 * 65 * (2048 * 512 * 9 + 512 * 512 + 512 * 512 + 512 * 64 * (2 * 3 + 1))
    assert (params, macs) == (9_996_800, 43_056_332_800)
    assert (rows["EMANet(512)"]["params_m"], rows["EMANet(512)"]["flops_g"]) == (9.997, 43.06)
    # The paper prints them to one decimal: 43.1 GFLOPs and 10.0 M parameters (Li et al.,
    # "Expectation-Maximization Attention Networks for Semantic Segmentation", ICCV 2019, Table 1).
    assert round(rows["EMANet(512)"]["flops_g"], 1) == 43.1
    assert round(rows["EMANet(512)"]["params_m"], 1) == 10.0


def test_mmseg_head_counts_what_its_layers_compute(rows):
    # Up to the classifier: ema_in_conv (3x3 2048->512 + BN), the unit (1x1 with bias, the
    # 512x64 bases, 1x1 + BN), the bottleneck (3x3 512->256 + BN) and conv_cat (3x3
    # (2048+256)->256 + BN); BN has a scale and a shift per channel.
    params = (
        (2048 * 512 * 9 + 2 * 512) + (512 * 512 + 512) + 512 * 64 + (512 * 512 + 2 * 512)
        + (512 * 256 * 9 + 2 * 256) + (2304 * 256 * 9 + 2 * 256)
    )
    positions = 65 * 65  # 513x513 at output stride 8
    # convs, then the EM attention: per iteration two C x N x K products (E and M steps),
    # three iterations, and one more for the reconstruction.
    macs = positions * (2048 * 512 * 9 + 512 * 512 + 512 * 512 + 512 * 256 * 9 + 2304 * 256 * 9)
    macs += positions * 512 * 64 * (2 * 3 + 1)
    row = rows["EMANet(512) mmseg"]
    assert row["params_m"] == round(params / 1e6, 3) == 16.486
    assert row["flops_g"] == round(macs / 1e9, 2) == 70.47
    # its unit and the conv in front of it are EMANet(512)'s layers: the rest is its extra convs
    assert row["params_m"] - rows["EMANet(512)"]["params_m"] == pytest.approx((1180160 + 5308928) / 1e6, abs=1e-3)


def test_non_local_costs_more_than_ema_at_the_same_width(rows):
    assert rows["Non-local"]["flops_g"] > rows["EMANet(512)"]["flops_g"]


@pytest.mark.slow
def test_json_output_has_the_paper_method_names():
    result = subprocess.run(
        [sys.executable, "scripts/complexity.py", "--json", "--no-memory", "--size", "129"],
        cwd=REPO, capture_output=True, text=True, check=True,
    )
    rows = json.loads(result.stdout)
    assert [row["method"] for row in rows][:6] == [
        "ResNet-101", "DeeplabV3", "DeeplabV3+", "PSANet", "EMANet(256)", "EMANet(512)",
    ]
    assert set(rows[0]) == {"method", "flops_g", "params_m", "memory_m"}


def test_saved_activation_memory_counts_each_saved_tensor_once():
    with torch.device("meta"):
        net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1, bias=False), torch.nn.ReLU())
        images = torch.empty(1, 3, 8, 8)
    # conv keeps its input (3x8x8 floats), ReLU its output (4x8x8 floats), per image.
    assert saved_activation_bytes(net, images) == (3 + 4) * 8 * 8 * 4


def test_memory_on_meta_equals_what_real_tensors_keep():
    torch.manual_seed(0)
    model = ResNet(18, output_stride=8, multi_grid=(1, 2), width=16)
    images = torch.randn(1, 3, 33, 33)
    kept: dict[int, int] = {}

    def pack(tensor):
        kept[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model.train()(images.expand(2, -1, -1, -1).contiguous())
    real = sum(n for ptr, n in kept.items() if ptr not in weights) // 2
    with torch.device("meta"):
        meta_model = ResNet(18, output_stride=8, multi_grid=(1, 2), width=16)
    assert saved_activation_bytes(meta_model, images.to("meta")) == real


def test_saved_activation_memory_counts_only_the_counted_modules():
    with torch.device("meta"):
        net = torch.nn.Sequential(
            torch.nn.Conv2d(3, 4, 3, padding=1, bias=False), torch.nn.ReLU(),  # "backbone"
            torch.nn.Conv2d(4, 5, 1, bias=False), torch.nn.ReLU(),  # counted
            torch.nn.Dropout2d(0.1), torch.nn.Conv2d(5, 6, 1),  # not counted
        )
        images = torch.empty(1, 3, 8, 8)
    # The counted conv keeps its input, which the "backbone" ReLU keeps already, and the
    # counted ReLU keeps its output (5x8x8 floats); the dropout and the last conv are left out.
    counted = saved_activation_bytes(net, images, [net[2], net[3]], excluded=[net[0], net[1]])
    assert counted == 5 * 8 * 8 * 4
    assert saved_activation_bytes(net, images, [net[2], net[3]]) == (4 + 5) * 8 * 8 * 4
    # no hook is left behind: the whole network is counted again without arguments
    assert saved_activation_bytes(net, images) > saved_activation_bytes(net, images, [net[2], net[3]])
    assert not any(module._forward_hooks or module._forward_pre_hooks for module in net.modules())


@pytest.mark.slow
def test_head_memory_counts_the_counted_modules_not_the_classifier():
    # FLOPs, params and memory count the same modules: for DeeplabV3 the ASPP, so the
    # classifier's input (the ASPP's dropout output, 256 x 9 x 9 floats at 65x65 and
    # output stride 8), which only the classifier keeps, is left out of the head's memory.
    images = torch.empty(1, 3, 65, 65, device="meta")
    with torch.device("meta"):
        model = build("deeplabv3", [])
    whole_head = saved_activation_bytes(model, images) - saved_activation_bytes(model.backbone, images)
    counted = saved_activation_bytes(model, images, [model.head.aspp], excluded=[model.backbone])
    assert whole_head - counted == 256 * 9 * 9 * 4


@pytest.mark.slow
def test_at_another_input_size_only_the_parameters_are_compared_with_the_paper(rows):
    other = {row["method"]: row for row in measure(257, with_memory=False)}
    for method, row in other.items():
        assert row["paper_flops_g"] is None and row["paper_memory_m"] is None
        assert row["paper_params_m"] == rows[method]["paper_params_m"] and row["params_m"] == rows[method]["params_m"]
    assert other["EMANet(512)"]["flops_g"] < rows["EMANet(512)"]["flops_g"] / 3  # 33x33 against 65x65 positions
