"""Loading ImageNet backbone weights offline, from files in every supported layout."""

from pathlib import Path

import pytest
import torch
import torchvision

from emanet.errors import CheckpointError
from emanet.models.pretrained import load_backbone_weights
from emanet.models.resnet import ResNet


def assert_backbone_equals(backbone, state):
    own = backbone.state_dict()
    for key, value in state.items():
        if not key.startswith("fc."):
            assert torch.equal(own[key], value), key


def test_torchvision_weights_come_from_the_hub_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    weights = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
    reference = torchvision.models.resnet18().state_dict()
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(reference, cache / Path(weights.url).name)  # where torchvision looks first
    backbone = ResNet(18, stem="torchvision", multi_grid=(1, 2))
    load_backbone_weights(backbone, "torchvision", 18, "torchvision")
    assert_backbone_equals(backbone, reference)


def test_torchvision_weights_need_the_torchvision_stem():
    with pytest.raises(CheckpointError, match="model.backbone.stem=torchvision"):
        load_backbone_weights(ResNet(18, multi_grid=(1, 2)), "torchvision", 18, "deep")


def test_release_deep_stem_file_loads_without_its_classifier(tmp_path):
    source = ResNet(50, stem="deep", width=8)
    state = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in source.state_dict().items()}
    state["fc.weight"] = torch.randn(1000, 256)
    state["fc.bias"] = torch.randn(1000)
    torch.save(state, tmp_path / "resnet50_deep.pth")
    backbone = ResNet(50, stem="deep", width=8)
    load_backbone_weights(backbone, str(tmp_path / "resnet50_deep.pth"), 50, "deep")
    assert_backbone_equals(backbone, state)


def test_project_checkpoint_provides_its_backbone(tmp_path):
    source = ResNet(18, stem="deep", width=8, multi_grid=(1, 2))
    state = {f"backbone.{k}": torch.full_like(v, 0.5) if v.is_floating_point() else v
             for k, v in source.state_dict().items()}
    state["head.classifier.weight"] = torch.zeros(3, 4, 1, 1)
    torch.save({"model": state, "iteration": 7}, tmp_path / "last.pt")
    backbone = ResNet(18, stem="deep", width=8, multi_grid=(1, 2))
    load_backbone_weights(backbone, str(tmp_path / "last.pt"), 18, "deep")
    assert all(torch.all(v == 0.5) for k, v in backbone.state_dict().items() if v.is_floating_point())


def test_shape_mismatch_is_refused_with_the_key(tmp_path):
    torch.save(ResNet(18, stem="deep", width=8, multi_grid=(1, 2)).state_dict(), tmp_path / "narrow.pth")
    wide = ResNet(18, stem="deep", width=16, multi_grid=(1, 2))
    with pytest.raises(CheckpointError, match=r"conv1\.0\.weight: file \(8, 3, 3, 3\) vs model \(16, 3, 3, 3\)"):
        load_backbone_weights(wide, str(tmp_path / "narrow.pth"), 18, "deep")


def test_missing_file_names_the_config_key(tmp_path):
    with pytest.raises(CheckpointError, match="pretrained weights not found at .*model.backbone.pretrained"):
        load_backbone_weights(ResNet(18, multi_grid=(1, 2)), str(tmp_path / "none.pth"), 18, "deep")


def test_file_lacking_backbone_tensors_is_refused_not_half_loaded(tmp_path):
    # mmcv's ResNetV1c names its deep stem stem.{0,1,3,4,6,7}: only layer1..4 would load.
    source = ResNet(18, stem="deep", width=8, multi_grid=(1, 2)).state_dict()
    state = {k.replace("conv1.", "stem.", 1).replace("bn1.", "stem.7.", 1) if not k.startswith("layer") else k: v
             for k, v in source.items()}
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}  # as pre-1.0 files
    torch.save({"state_dict": state}, tmp_path / "resnet18_v1c.pth")
    backbone = ResNet(18, stem="deep", width=8, multi_grid=(1, 2))
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    with pytest.raises(CheckpointError) as raised:
        load_backbone_weights(backbone, str(tmp_path / "resnet18_v1c.pth"), 18, "deep")
    assert str(raised.value) == (
        f"pretrained weights {tmp_path / 'resnet18_v1c.pth'} lack 15 of the backbone's tensors (e.g. "
        "conv1.0.weight, conv1.1.weight, conv1.1.bias): the file is in another layout or for another stem "
        "(model.backbone.stem); see emanet/models/pretrained.py for the layouts read, "
        "or set model.backbone.pretrained=null to train from scratch"
    )
    assert all(torch.equal(v, before[k]) for k, v in backbone.state_dict().items())
    # The same tensors under the release's names, without num_batches_tracked, load.
    torch.save({k: v for k, v in source.items() if not k.endswith("num_batches_tracked")}, tmp_path / "deep.pth")
    load_backbone_weights(backbone, str(tmp_path / "deep.pth"), 18, "deep")
    assert_backbone_equals(backbone, {k: v for k, v in source.items() if not k.endswith("num_batches_tracked")})
