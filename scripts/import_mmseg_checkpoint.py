"""Convert a published mmsegmentation EMANet checkpoint into this project's format.

    python scripts/import_mmseg_checkpoint.py SRC DST [--experiment cityscapes_mmseg_r101] [overrides...]
    python evaluate.py experiment=cityscapes_mmseg_r101 checkpoint=DST

SRC is mmsegmentation's ``{'state_dict': ..., 'meta': ...}`` file. ``--experiment`` names
the published model it comes from, one experiment each: cityscapes_mmseg_r101 /
cityscapes_mmseg_r50 (their 769x769 models) and cityscapes_mmseg_r101_512x1024 /
cityscapes_mmseg_r50_512x1024. Every tensor of the file must fill one of the model of
``--experiment`` (``model=emanet_mmseg``) with its shape, and every tensor of the model
must be filled; a file whose recorded config (``meta``) names another crop size or
``align_corners`` than the experiment's is refused; otherwise nothing is written. DST is
written atomically, with its SHA-256 digest beside it and the resolved config inside.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from omegaconf import OmegaConf

from emanet.cli import compose_config
from emanet.data.transforms import height_width
from emanet.engine.checkpoint import save_checkpoint
from emanet.errors import CheckpointError, EmanetError
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


def check_recipe(source: str | Path, meta: dict, cfg, experiment: str, overrides) -> None:
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
    source: str | Path, destination: str | Path, experiment: str = "cityscapes_mmseg_r101", overrides=(),
    trusted: bool = False,
) -> dict:
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", help="checkpoint published by mmsegmentation")
    parser.add_argument("destination", help="where to write this project's checkpoint")
    parser.add_argument(
        "--experiment", default="cityscapes_mmseg_r101",
        help=f"the experiment of the published model the weights come from ({', '.join(MMSEG_EXPERIMENTS)})",
    )
    parser.add_argument(
        "--trusted", action="store_true",
        help="read a file holding more than tensors and plain containers (a pickle can run code)",
    )
    parser.add_argument("overrides", nargs="*", help="extra config overrides, e.g. model.backbone.depth=50")
    args = parser.parse_intermixed_args()  # overrides may follow --experiment
    try:
        checkpoint = import_checkpoint(args.source, args.destination, args.experiment, args.overrides, args.trusted)
    except EmanetError as error:  # a config or checkpoint problem, in one line
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    print(f"wrote {args.destination} (iteration {checkpoint['iteration']}, experiment={args.experiment})")


if __name__ == "__main__":
    main()
