"""Every training and evaluation behind the paper's Tables 1, 3 and 4 and its iteration
table, and beyond it (Cityscapes, ADE20K), under one root, on any Hydra launcher; then the
tables beside the paper's (or others' published) numbers.

    python scripts/reproduce_paper.py [--root DIR] [--only table1,table3,table4,iteration,beyond]
        [--dry-run] [--smoke [--record]] [--max-stages 8] [overrides...]

    python scripts/reproduce_paper.py --dry-run          # the runs, their GPU-hours, what is missing
    python scripts/reproduce_paper.py hydra/launcher=submitit_slurm hydra.launcher.partition=gpu

Runs (ROOT: runs/paper, or runs/paper_smoke with --smoke):
  table1     ROOT/resnet101/voc_{emanet512,emanet256,deeplabv3,deeplabv3plus,psanet,nonlocal,fcn}
  table3/4   ROOT/resnet101/{context,cocostuff10k}_emanet512, ROOT/resnet50/... (ResNet-50 rows)
  iteration  ROOT/iteration/T<t> (voc_r50_ablation, model.ema.train_stages=t, eval=ss), each
             evaluated with every T_eval >= t in ROOT/iteration/T<t>/eval_ss_T<T_eval>
  beyond     ROOT/beyond/{cityscapes_emanet512,cityscapes_r50_emanet512,cityscapes_mmseg_r101,
             cityscapes_mmseg_r50,ade20k_emanet512} (mmsegmentation's published weights are
             imported and evaluated by hand: scripts/paper_tables.py takes those runs)
The runs of one backbone (and the iteration table's trainings, and the evaluations of each of
them) are one Hydra multirun (`train.py -m experiment=a,b,c`), so a cluster launcher submits
each as one job array; with a cluster launcher the multiruns are submitted together, with one
that runs jobs here (basic, submitit_local) one after another. Overrides (key=value) go to
every train.py / evaluate.py call: hydra/launcher=..., hydra.launcher.*=..., runtime.*....

A run with a metrics.json is finished and skipped; any other is launched again into its run
directory, where training resumes from its last checkpoint. ROOT records the overrides
(reproduce_paper.json) and refuses different ones. The tables are written to ROOT as
table1, table3, table4, iteration_table and beyond (.md, .csv, .png), the paper's numbers
(beyond it, the authors' release README's and mmsegmentation's) beside ours.

Before launching, every dataset split (with its published size) and pretrained backbone the
runs read is checked; each one missing is one line naming the path and the command that makes
it, and the script stops with exit status 2 before launching anything. --dry-run prints the
runs (finished or not, GPU-hours each: measured where docs/benchmarks.jsonl has a GPU
measurement of the model, else an estimate from its training FLOPs) and the missing
prerequisites, and launches nothing: exit status 0 if everything is ready, 2 if something is
missing. --smoke runs the same pipeline on the demo data with the demo's network and a few
iterations (no real data needed): the whole paper in minutes on a laptop (Table 1's FLOPs,
memory and parameter columns, which describe the paper's networks, are left empty);
--smoke --record times it, from scratch (a new ROOT), into docs/benchmarks.jsonl and
docs/benchmarks.md. Exit status 1: a run failed (the tables are still written from the
finished runs).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from emanet import reproduce
from emanet.errors import EmanetError
from emanet.reproduce_paper import chosen_parts, reproduce_paper

DOCS = Path(__file__).resolve().parents[1] / "docs"  # the published benchmark records and tables


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, help="where every run and table goes (default runs/paper)")
    parser.add_argument("--only", help=f"comma-separated parts to run (default all: {','.join(reproduce.PARTS)})")
    parser.add_argument("--dry-run", action="store_true", help="list the runs and check the prerequisites only")
    parser.add_argument("--smoke", action="store_true", help="demo data, demo network, a few iterations")
    parser.add_argument("--record", action="store_true",
                        help="with --smoke: publish its wall time in docs/benchmarks.jsonl and docs/benchmarks.md")
    parser.add_argument("--max-stages", type=int, default=8, help="largest T of the iteration table (the paper: 8)")
    parser.add_argument("--assumed-tflops", type=float, default=reproduce.ASSUMED_TFLOPS,
                        help="sustained TFLOP/s of the GPU-hour estimates (default %(default)g)")
    parser.add_argument("overrides", nargs="*", help="overrides for every train.py / evaluate.py call")
    args = parser.parse_args(argv)
    try:
        args.parts = chosen_parts(args.only)
    except EmanetError as error:
        parser.error(str(error))
    if args.record and (not args.smoke or args.dry_run):
        parser.error("--record times a smoke run: pass --smoke, without --dry-run")
    if args.max_stages < 1:
        parser.error(f"--max-stages must be a positive whole number, got {args.max_stages}")
    if any(o.partition("=")[0].lstrip("+~") == "experiment" for o in args.overrides):
        parser.error("experiment=... is chosen for each run by the script; leave it out of the overrides")
    return args


def main() -> None:
    args = parse_arguments()
    logging.basicConfig(level=logging.INFO, format="[%(name)s] %(message)s")
    command = " ".join(["python scripts/reproduce_paper.py", *sys.argv[1:]])
    try:
        status = reproduce_paper(
            args.root, args.parts, args.overrides, DOCS, command, smoke=args.smoke, dry_run=args.dry_run,
            record=args.record, max_stages=args.max_stages, assumed_tflops=args.assumed_tflops,
        )
    except EmanetError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    sys.exit(status)


if __name__ == "__main__":
    main()
