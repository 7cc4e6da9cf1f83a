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
written atomically, with its SHA-256 digest beside it and the resolved config inside
(emanet.importers.mmseg).
"""

from __future__ import annotations

import argparse
import sys

from emanet.errors import EmanetError
from emanet.importers.mmseg import MMSEG_EXPERIMENTS, import_checkpoint


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
