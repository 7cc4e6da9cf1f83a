"""Convert a published mmsegmentation EMANet checkpoint into this project's format.

    python scripts/import_mmseg_checkpoint.py SRC DST [--experiment cityscapes_mmseg_r101] [overrides...]
    python evaluate.py experiment=cityscapes_mmseg_r101 checkpoint=DST

SRC is mmsegmentation's ``{'state_dict': ..., 'meta': ...}`` file (e.g. their EMANet
R-101-D8 769x769 80k Cityscapes model; ``--experiment cityscapes_mmseg_r50`` for the
R-50-D8 one). Every tensor of the file must fill one of the model of ``--experiment``
(``model=emanet_mmseg``) with its shape, and every tensor of the model must be filled;
otherwise nothing is written. DST is written atomically, with its SHA-256 digest beside it
and the resolved config inside.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from omegaconf import OmegaConf

from emanet.cli import compose_config
from emanet.engine.checkpoint import save_checkpoint
from emanet.errors import EmanetError
from emanet.models.mmseg import load_mmseg_checkpoint
from emanet.models.segmentor import build_model


def import_checkpoint(
    source: str | Path, destination: str | Path, experiment: str = "cityscapes_mmseg_r101", overrides=(),
    trusted: bool = False,
) -> dict:
    cfg = compose_config("train", [f"experiment={experiment}", *overrides])
    model = build_model(cfg.model, cfg.dataset.num_classes, load_pretrained=False)
    iteration = load_mmseg_checkpoint(model, source, trusted)
    checkpoint = {
        "model": model.state_dict(), "iteration": iteration, "config": OmegaConf.to_container(cfg, resolve=True),
        "imported_from": f"mmsegmentation: {Path(source).name}",
    }
    save_checkpoint(checkpoint, destination)
    return checkpoint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", help="checkpoint published by mmsegmentation")
    parser.add_argument("destination", help="where to write this project's checkpoint")
    parser.add_argument(
        "--experiment", default="cityscapes_mmseg_r101", help="experiment config the weights belong to"
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
