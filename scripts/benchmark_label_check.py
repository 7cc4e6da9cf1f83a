"""Time the check of every label before training (emanet.data.label_check) on VOC-sized data.

    python scripts/benchmark_label_check.py [--count 12031] [--workers 0 2 4] [--mode P] [--out DIR] [--record]

Writes ``--count`` synthetic samples in the layout of ``dataset=voc_aug`` (10,582 trainaug
and 1,449 val by default, the real sizes), one label holding a bad value, then checks both
splits with each thread count of ``--workers`` (``runtime.num_workers`` in training) three
times: cold from disk (the files dropped from the page cache), cold, and cached
(emanet.benchmarks.label_check says how).

Results go to ``runs/benchmark_label_check/<date>/`` (``results.json``, ``results.md``);
the synthetic data is deleted at the end. ``--record`` also writes the table into
docs/benchmarks.md, between ``<!-- label-check:begin -->`` and ``<!-- label-check:end -->``.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import sys
from pathlib import Path

from emanet.benchmarks.label_check import DEFAULT_WORKERS, VOC_TRAIN, VOC_VAL, label_check_benchmark
from emanet.errors import EmanetError

DOCS = Path(__file__).resolve().parents[1] / "docs"  # the published tables


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=VOC_TRAIN + VOC_VAL,
                        help=f"samples to write (default {VOC_TRAIN + VOC_VAL}: VOC's trainaug + val)")
    parser.add_argument("--workers", type=int, nargs="+", default=DEFAULT_WORKERS, help="thread counts to time")
    parser.add_argument("--mode", choices=["P", "L"], default="P", help="label PNG mode (default P, as voc_aug's)")
    parser.add_argument("--out", type=Path, help="results folder (default runs/benchmark_label_check/<date>)")
    parser.add_argument("--record", action="store_true", help="write the table into docs/benchmarks.md")
    args = parser.parse_args()
    if args.count < 10:
        parser.error("--count must be at least 10")
    logging.basicConfig(level=logging.WARNING)
    now = datetime.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    out = (args.out or Path("runs") / "benchmark_label_check" / now).resolve()
    try:
        label_check_benchmark(out, args.count, args.workers, args.mode, DOCS, publish=args.record)
    except EmanetError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
