"""A published mmsegmentation EMANet checkpoint (``{'state_dict': ..., 'meta': ...}``) as a
checkpoint of this project, for one experiment per published model: every tensor of the file
must fill one of the model (``model=emanet_mmseg``) with its shape and every tensor of the
model must be filled; a file whose recorded config (``meta``) names another crop size or
``align_corners`` than the experiment's is refused; otherwise nothing is written. The
checkpoint is written atomically, with its SHA-256 digest beside it and the resolved config
inside."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from emanet.cli import compose_config
from emanet.data.transforms import height_width
from emanet.engine.checkpoint import save_checkpoint
from emanet.errors import CheckpointError
from emanet.models.mmseg import (
    load_mmseg_state,
    read_mmseg_checkpoint,
    recipe_conflicts,
    recorded_recipe,
    saved_iteration,
)
from emanet.models.segmentor import build_model

# One experiment per published mmsegmentation EMANet (configs/emanet/ of mmsegmentation).
MMSEG_EXPERIMENTS = (
    "cityscapes_mmseg_r101", "cityscapes_mmseg_r50", "cityscapes_mmseg_r101_512x1024", "cityscapes_mmseg_r50_512x1024",
)


def check_recipe(source: str | Path, meta: dict, cfg: DictConfig, experiment: str, overrides: Sequence[str]) -> None:
    """Refuse, in one line naming the experiment to use, a checkpoint whose recorded config
    contradicts the crops or ``align_corners`` of ``cfg`` (``experiment``'s config): its
    logits would be upsampled with the wrong convention."""
    recorded = recorded_recipe(meta)

    def conflicts(config) -> list[str]:
        return recipe_conflicts(recorded, height_width(config.dataset.crop_size), config.model.align_corners)

    found = conflicts(cfg)
    if not found:
        return
    matching = [
        name for name in MMSEG_EXPERIMENTS
        if name != experiment and not conflicts(compose_config("train", [f"experiment={name}", *overrides]))
    ]
    hint = f"import it with --experiment {' or '.join(matching)}" if matching else "check --experiment"
    raise CheckpointError(
        f"{source}: its recorded config trained with {' and '.join(found)}: it is not experiment={experiment}'s "
        f"model; {hint}"
    )


def import_checkpoint(
    source: str | Path, destination: str | Path, experiment: str = "cityscapes_mmseg_r101",
    overrides: Sequence[str] = (), trusted: bool = False,
) -> dict:
    """Convert mmsegmentation's ``source`` into ``destination`` for ``experiment`` (with
    ``overrides``); the checkpoint written. ``trusted``: read a file holding more than
    tensors and plain containers (a pickle can run code)."""
    state, meta = read_mmseg_checkpoint(source, trusted)
    cfg = compose_config("train", [f"experiment={experiment}", *overrides])
    check_recipe(source, meta, cfg, experiment, overrides)
    model = build_model(cfg.model, cfg.dataset.num_classes, load_pretrained=False)
    load_mmseg_state(model, state, source)
    checkpoint = {
        "model": model.state_dict(), "iteration": saved_iteration(meta),
        "config": OmegaConf.to_container(cfg, resolve=True), "imported_from": f"mmsegmentation: {Path(source).name}",
    }
    save_checkpoint(checkpoint, destination)
    return checkpoint
