"""A checkpoint that does not fit the model: the cause and the fix first, the keys summarised."""

import pytest
from torch import nn

from emanet.engine.checkpoint import load_model_weights
from emanet.errors import CheckpointMismatchError


def test_another_architecture_is_explained_cause_first_in_a_few_hundred_characters(tmp_path):
    # The shape of a demo checkpoint evaluated as voc_emanet512: hundreds of keys the model
    # does not have, hundreds it misses, and tensors of other sizes.
    trained = nn.ModuleDict({f"demo_block_{i}": nn.Linear(4, 4) for i in range(300)} | {"head": nn.Linear(4, 4)})
    configured = nn.ModuleDict({f"voc_block_{i}": nn.Linear(4, 4) for i in range(400)} | {"head": nn.Linear(4, 8)})
    checkpoint = {"model": trained.state_dict(), "config": {"name": "demo"}}
    path = tmp_path / "last.pt"
    with pytest.raises(CheckpointMismatchError) as raised:
        load_model_weights(configured, checkpoint, path)
    message = str(raised.value)
    assert message.startswith(
        f"{path} was trained with experiment=demo and does not fit the configured model: pass experiment=demo"
    )
    assert len(message) < 600, message
    assert "800 missing keys (voc_block_0.weight, voc_block_0.bias, voc_block_1.weight, ...)" in message
    assert "600 unexpected keys (demo_block_0.weight, demo_block_0.bias, demo_block_1.weight, ...)" in message
    assert "size mismatch for head.weight: copying a param with shape torch.Size([4, 4]) from checkpoint" in message
    assert "; and 1 more" in message  # head.bias
    assert "voc_block_399.bias" not in message
    for key in ["voc_block_399.bias", "demo_block_299.bias", "size mismatch for head.bias"]:
        assert key in raised.value.details  # for the run's log file


def test_without_the_experiment_it_was_trained_with_the_fix_still_comes_first(tmp_path):
    checkpoint = {"model": nn.Linear(4, 4).state_dict()}
    with pytest.raises(CheckpointMismatchError, match=r"^\S+ does not fit the configured model: pass the experiment "
                                                      r"the checkpoint was trained with\. Differences: 2 missing keys"):
        load_model_weights(nn.Sequential(nn.Linear(4, 4)), checkpoint, tmp_path / "a.pt")
