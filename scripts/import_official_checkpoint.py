"""Convert a checkpoint saved by the authors' EMANet code into this project's format.

    python scripts/import_official_checkpoint.py SRC DST [--experiment voc_release] [overrides...]
    python evaluate.py experiment=voc_release checkpoint=DST

SRC is the release's ``{'net': state_dict, 'step': int}`` file. The converted weights are
loaded strictly into the model of ``--experiment`` (so a mismatch is caught here, not at
evaluation), and DST is written atomically with the resolved config (emanet.importers.release). ``voc_release`` is
EMANet(512) with the release's input normalisation and evaluation protocol.
"""

from __future__ import annotations

import argparse
import sys

from emanet.errors import CheckpointError
from emanet.importers.release import import_checkpoint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", help="checkpoint saved by the authors' code")
    parser.add_argument("destination", help="where to write this project's checkpoint")
    parser.add_argument("--experiment", default="voc_release", help="experiment config the weights belong to")
    parser.add_argument("overrides", nargs="*", help="extra config overrides, e.g. dataset.num_classes=21")
    args = parser.parse_intermixed_args()  # overrides may come after --experiment
    try:
        checkpoint = import_checkpoint(args.source, args.destination, args.experiment, args.overrides)
    except CheckpointError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    print(f"wrote {args.destination} (step {checkpoint['iteration']}, experiment={args.experiment})")


if __name__ == "__main__":
    main()
