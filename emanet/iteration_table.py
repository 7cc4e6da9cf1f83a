"""The paper's iteration table for any experiment: one model per train_stages (T), each
evaluated with every eval_stages (T) >= it, beside the paper's numbers.

    python scripts/iteration_table.py [--max-stages 8] [--train-stages 1 2 3] [--eval ss]
        [--root DIR] [--output DIR] [train.py overrides...]

    python scripts/iteration_table.py experiment=voc_r50_ablation     # the paper's setting

Trainings run as one Hydra multirun (``emanet-train -m model.ema.train_stages=...``) into
ROOT/T<train_stages>/ (default ROOT: runs/iteration_table/<experiment name>); the
evaluations of each training as one more (``emanet-evaluate -m model.ema.eval_stages=...``)
into ROOT/T<train_stages>/eval_<protocol>_T<eval_stages>/. hydra/launcher=... and
hydra.launcher.*=... go to every multirun (e.g. hydra/launcher=submitit_slurm for one job
array each). Re-running skips every training and evaluation that has its metrics.json, and
an interrupted training resumes from its last checkpoint; ROOT records the training
overrides (iteration_table.json) and refuses different ones. The table is written as
iteration_table.{md,csv,png,pdf} to ROOT (and to --output). Relative paths (data_root=...,
--root) are taken from the current directory, as train.py does.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
from pathlib import Path

from emanet import reproduce
from emanet.cli import compose_config, one_line_errors
from emanet.errors import ConfigError
from emanet.io import atomic_write
from emanet.tables import iteration_rows, write_iteration_table


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-stages", type=int, default=8, help="largest T (the paper: 8)")
    parser.add_argument("--train-stages", nargs="*", metavar="T", help="train_stages values to train (default 1..max)")
    parser.add_argument("--eval", default="ss", help="evaluation protocol (eval config group), default ss")
    parser.add_argument("--root", type=Path, help="where trainings and evaluations go")
    parser.add_argument("--output", type=Path, help="also copy the table files here")
    parser.add_argument("overrides", nargs="*", help="train.py overrides (experiment=..., schedule...)")
    args = parser.parse_args(argv)
    if args.train_stages is not None:
        # --train-stages takes any number of values, so the overrides after it land there too.
        tokens, args.train_stages = args.train_stages, [int(t) for t in args.train_stages if t.isdigit()]
        args.overrides += [t for t in tokens if not t.isdigit()]
        if not args.train_stages:
            parser.error("--train-stages needs at least one T (a positive whole number)")
    return args


def make_iteration_table(args: argparse.Namespace) -> tuple[Path, list[str]]:
    """Train and evaluate what ROOT lacks, then write the table there (and copy it to
    --output). Returns ROOT and a line for each multirun that failed or could not start; the
    table is written only when none did."""
    job_overrides, hydra_overrides = reproduce.split_hydra_overrides(args.overrides)
    cfg = compose_config("train", job_overrides)
    if cfg.model.head != "ema":
        raise ConfigError(f"the iteration table needs the EMA head, experiment {cfg.name} has {cfg.model.head}")
    root = (args.root or Path("runs") / "iteration_table" / cfg.name).resolve()
    stages = args.train_stages or list(range(1, args.max_stages + 1))
    reproduce.check_recorded_settings(root / "iteration_table.json", {"overrides": job_overrides})
    runs = reproduce.iteration_runs(root, reproduce.as_pairs(job_overrides), stages, args.max_stages, args.eval)
    failures = reproduce.launch(
        reproduce.unfinished_sweeps(runs), hydra_overrides, reproduce.uses_cluster_launcher(hydra_overrides)
    )
    if failures:
        return root, failures
    rows = iteration_rows(reproduce.iteration_results(runs), args.max_stages)
    title = f"Iteration table: {cfg.name} ({' '.join(job_overrides) or 'defaults'}), eval={args.eval}"
    paths = write_iteration_table(rows, args.max_stages, root, title)
    if args.output:
        for path in paths:
            atomic_write(args.output / path.name, lambda temp, path=path: shutil.copyfile(path, temp))
    return root, []


def main(argv: list[str] | None = None) -> None:
    """scripts/iteration_table.py: a problem the user can fix ends it with one line and
    status 2, a failed multirun with status 1."""
    args = parse_arguments(argv)
    logging.basicConfig(level=logging.INFO, format="[%(name)s] %(message)s")
    with one_line_errors():
        root, failures = make_iteration_table(args)
    for line in failures:
        print(f"error: {line}", file=sys.stderr)
    if failures:
        sys.exit(1)
    print((root / "iteration_table.md").read_text())
