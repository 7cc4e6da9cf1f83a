"""The paper's iteration table for any experiment: one model per T in training, each
evaluated with every T >= it, beside the paper's numbers.

    python scripts/iteration_table.py [--max-stages 8] [--train-stages 1 2 3] [--eval ss]
        [--root DIR] [--output DIR] [train.py overrides...]

    python scripts/iteration_table.py experiment=voc_r50_ablation     # the paper's setting

Trainings run as one Hydra multirun (``train.py -m model.ema.train_stages=...``) into
ROOT/T<t>/ (default ROOT: runs/iteration_table/<experiment name>); evaluations go to
ROOT/T<t>/eval_<protocol>_T<t_eval>/. Re-running skips every training and evaluation that
has its metrics.json, and an interrupted training resumes from its last checkpoint; ROOT
records the training overrides (iteration_table.json) and refuses different ones. The
table is written as iteration_table.{md,csv,png} to ROOT (and to --output). Relative
paths (data_root=..., --root) are taken from the current directory, as train.py does.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

from emanet.cli import compose_config
from emanet.engine.evaluate import evaluate_checkpoint
from emanet.io import atomic_write, write_json
from emanet.tables import iteration_rows, read_metrics, write_iteration_table

REPO = Path(__file__).resolve().parents[1]
log = logging.getLogger("iteration_table")


def train_missing(root: Path, stages: list[int], overrides: list[str], eval_protocol: str) -> None:
    missing = [t for t in stages if read_metrics(root / f"T{t}") is None]
    if not missing:
        return
    log.info("training T = %s into %s", missing, root)
    command = [
        sys.executable, str(REPO / "train.py"), "-m", *overrides, f"eval={eval_protocol}",
        f"model.ema.train_stages={','.join(str(t) for t in missing)}",
        f"hydra.sweep.dir={root}", "hydra.sweep.subdir=T${model.ema.train_stages}",
    ]
    subprocess.run(command, check=True)  # in this directory, like the evaluations


def evaluation_dir(root: Path, t_train: int, t_eval: int, eval_protocol: str) -> Path:
    return root / f"T{t_train}" / f"eval_{eval_protocol}_T{t_eval}"


def check_overrides(root: Path, overrides: list[str]) -> None:
    """Record the training overrides in ROOT, or refuse ones that differ from those recorded:
    the trainings found there would not be the ones asked for."""
    record = root / "iteration_table.json"
    if record.is_file():
        recorded = json.loads(record.read_text())["overrides"]
        if recorded != overrides:
            raise SystemExit(
                f"error: {root} holds trainings with the overrides {recorded}, not {overrides}: "
                "re-run with those, or pass --root DIR for the new settings"
            )
        return
    write_json({"overrides": overrides}, record)


def evaluate_missing(root: Path, t_train: int, max_stages: int, overrides: list[str], eval_protocol: str) -> None:
    checkpoint = root / f"T{t_train}" / "checkpoints" / "last.pt"
    for t_eval in range(t_train, max_stages + 1):
        out = evaluation_dir(root, t_train, t_eval, eval_protocol)
        if read_metrics(out) is not None:
            continue
        out.mkdir(parents=True, exist_ok=True)
        cfg = compose_config("evaluate", [
            *overrides, f"eval={eval_protocol}", f"checkpoint={checkpoint}",
            f"model.ema.train_stages={t_train}", f"model.ema.eval_stages={t_eval}", "runtime.progress=false",
        ])
        evaluate_checkpoint(cfg, out)


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-stages", type=int, default=8, help="largest T (the paper: 8)")
    parser.add_argument("--train-stages", nargs="*", metavar="T", help="T values to train (default 1..max)")
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


def main() -> None:
    args = parse_arguments()
    logging.basicConfig(level=logging.INFO, format="[%(name)s] %(message)s")
    cfg = compose_config("train", args.overrides)
    if cfg.model.head != "ema":
        raise SystemExit(f"error: the iteration table needs the EMA head, experiment {cfg.name} has {cfg.model.head}")
    root = (args.root or Path("runs") / "iteration_table" / cfg.name).resolve()
    stages = args.train_stages or list(range(1, args.max_stages + 1))

    check_overrides(root, args.overrides)
    train_missing(root, stages, args.overrides, args.eval)
    results = {}
    for t_train in stages:
        evaluate_missing(root, t_train, args.max_stages, args.overrides, args.eval)
        for t_eval in range(t_train, args.max_stages + 1):
            results[(t_train, t_eval)] = read_metrics(evaluation_dir(root, t_train, t_eval, args.eval))["mIoU"]
    rows = iteration_rows(results, args.max_stages)
    title = f"Iteration table: {cfg.name} ({' '.join(args.overrides) or 'defaults'}), eval={args.eval}"
    paths = write_iteration_table(rows, args.max_stages, root, title)
    if args.output:
        for path in paths:
            atomic_write(args.output / path.name, lambda temp, path=path: shutil.copyfile(path, temp))
    print((root / "iteration_table.md").read_text())


if __name__ == "__main__":
    main()
