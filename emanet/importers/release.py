"""A checkpoint saved by the authors' EMANet code (``{'net': state_dict, 'step': int}``) as a
checkpoint of this project: the converted weights loaded strictly into the model of an
experiment (so a mismatch is caught here, not at evaluation) and saved atomically with the
resolved config. ``voc_release`` is EMANet(512) with the release's input normalisation and
evaluation protocol."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from omegaconf import OmegaConf

from emanet.cli import compose_config
from emanet.engine.checkpoint import save_checkpoint, state_dict_mismatch
from emanet.errors import CheckpointError
from emanet.models.release import read_release_checkpoint
from emanet.models.segmentor import build_model


def import_checkpoint(
    source: str | Path, destination: str | Path, experiment: str = "voc_release", overrides: Sequence[str] = ()
) -> dict:
    """Convert the release's ``source`` into ``destination`` for ``experiment`` (with
    ``overrides``); the checkpoint written. Raises :class:`CheckpointError` for a file that
    is not a release checkpoint or does not fit the model."""
    cfg = compose_config("train", [f"experiment={experiment}", *overrides])
    state, step = read_release_checkpoint(source)
    model = build_model(cfg.model, cfg.dataset.num_classes, load_pretrained=False)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise CheckpointError(f"{source} does not fit experiment={experiment}: {state_dict_mismatch(error)}") from error
    checkpoint = {
        "model": model.state_dict(), "iteration": step, "config": OmegaConf.to_container(cfg, resolve=True),
        "imported_from": f"the authors' release: {Path(source).name}",
    }
    save_checkpoint(checkpoint, destination)
    return checkpoint
