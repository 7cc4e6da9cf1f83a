"""The fault battery: what a long run on a shared, preemptible machine meets, done to the
demo, and what came of it.

    python scripts/fault_battery.py [--out DIR] [--kills 5] [--seed 0] [--record]

Every scenario runs ``train.py``, ``evaluate.py`` or ``scripts/predict.py`` of this checkout
in a subprocess, as a user or a cluster would, around the same small demo run (a few
hundred iterations on CPU), and checks that nothing is lost and nothing is silently wrong
(the final weights of interrupted trainings compared with one uninterrupted run's): SIGKILL
at random moments, flipped checkpoint bytes, concurrent runs, signals, a full disk, typos,
out of memory, bad labels and images, and more (emanet.benchmarks.fault_battery lists them).

Results go to ``runs/fault_battery/<date>/`` (``results.md``, ``results.json`` and each
scenario's runs); ``--record`` also writes the table into docs/benchmarks.md. Exit status 1
if a scenario failed.
"""

from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path

from emanet.benchmarks.fault_battery import record, run_battery, table
from emanet.benchmarks.records import machine_cell, machine_description
from emanet.errors import EmanetError

REPO = Path(__file__).resolve().parents[1]  # the checkout whose entry points are run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="results folder (default runs/fault_battery/<date>)")
    parser.add_argument("--kills", type=int, default=5, help="random SIGKILLs in the first scenario")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill moments")
    parser.add_argument("--record", action="store_true", help="write the table into docs/benchmarks.md")
    args = parser.parse_args()
    out = (args.out or Path("runs") / "fault_battery" / datetime.datetime.now().strftime("%Y-%m-%d_%H-%M-%S"))
    out = out.resolve()
    try:
        rows, seconds = run_battery(REPO, out, args.kills, args.seed)
        print(table(rows))
        print(f"results in {out}")
        if args.record:
            record(REPO / "docs", rows, machine_cell({"machine": machine_description()}), seconds)
    except EmanetError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    sys.exit(0 if all(row["passed"] is not False for row in rows) else 1)


if __name__ == "__main__":
    main()
