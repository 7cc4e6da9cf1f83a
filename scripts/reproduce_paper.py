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
import json
import logging
import os
import sys
import time
from pathlib import Path

from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException

from emanet import reproduce
from emanet.benchmark_records import append_record, rebuild_table, records, rows_table
from emanet.cli import compose_config
from emanet.errors import EmanetError

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchmark import config_train_step_flops, model_name  # noqa: E402
from complexity import measure  # noqa: E402

SMOKE_ITERATIONS = 2
log = logging.getLogger("reproduce_paper")


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
    args.parts = reproduce.PARTS if args.only is None else [part.strip() for part in args.only.split(",")]
    unknown = [part for part in args.parts if part not in reproduce.PARTS]
    if unknown or not args.parts:
        parser.error(f"--only takes parts among {','.join(reproduce.PARTS)}, got {args.only!r}")
    if args.record and (not args.smoke or args.dry_run):
        parser.error("--record times a smoke run: pass --smoke, without --dry-run")
    if args.max_stages < 1:
        parser.error(f"--max-stages must be a positive whole number, got {args.max_stages}")
    if any(o.partition("=")[0].lstrip("+~") == "experiment" for o in args.overrides):
        parser.error("experiment=... is chosen for each run by the script; leave it out of the overrides")
    return args


def costs(runs: list[reproduce.Run], configs: dict, tflops: float) -> list[reproduce.Cost]:
    """Each run's GPU-hours (``configs``: the runs' configs composed so far; the others are
    composed here); the FLOPs of one training step are counted once per network."""
    others = [run for run in runs if run not in configs]
    configs = {**configs, **dict(zip(others, reproduce.run_configs(others, compose_config), strict=True))}
    measurements = records("train")
    step_flops: dict[str, float] = {}
    result = []
    for run in runs:
        cfg = configs[run]
        network = f"{model_name(cfg)} {cfg.model} crop {cfg.dataset.crop_size} classes {cfg.dataset.num_classes}"
        if network not in step_flops:
            # Two crops, not one: training-mode BatchNorm refuses a batch of one after global pooling.
            step_flops[network] = config_train_step_flops(cfg, 2) / 2
        measured = reproduce.measured_images_per_second(measurements, model_name(cfg), cfg)
        result.append(reproduce.run_cost(run, cfg, step_flops[network], measured, tflops))
    return result


# docs/benchmarks.md's table of the smoke runs timed with --record.
SMOKE_COLUMNS = [
    ("command", lambda record, _: f"`{record['command']}`"),
    ("runs", lambda record, _: record["runs"]),
    ("jobs at once", lambda record, _: record["jobs_at_once"]),
    ("wall time", lambda record, _: "{} min {} s".format(*divmod(round(record["wall_seconds"]), 60))),
    ("load average at the start", lambda record, _: record["load_average"]),
]


def smoke_table(smoke_records: list[dict]) -> str:
    return rows_table(smoke_records, SMOKE_COLUMNS, rows_of=lambda record: [record])


def jobs_at_once(training: reproduce.Run, hydra_overrides: list[str]) -> int | str:
    """How many jobs of a multirun the launcher runs at once ("all": as many as it is given)."""
    if reproduce.chosen_launcher(hydra_overrides) == "basic":
        return 1
    cfg = compose_config("train", [*training.override_list(), *hydra_overrides], return_hydra_config=True)
    return cfg.hydra.sweeper.max_batch_size or "all"


def main(argv: list[str] | None = None) -> None:
    started, load_average = time.perf_counter(), os.getloadavg()[0]
    args = parse_arguments(argv)
    logging.basicConfig(level=logging.INFO, format="[%(name)s] %(message)s")
    job_overrides, hydra_overrides = reproduce.split_hydra_overrides(args.overrides)
    smoke = None
    if args.smoke:
        demo = compose_config("train", ["experiment=demo"])
        smoke = reproduce.smoke_overrides(demo, SMOKE_ITERATIONS, reproduce.chosen_launcher(hydra_overrides) != "basic")
    root = (args.root or Path("runs") / ("paper_smoke" if args.smoke else "paper")).resolve()
    runs = reproduce.paper_runs(root, args.parts, job_overrides, smoke, args.max_stages)
    if args.record and any(run.finished for run in runs):
        raise SystemExit(f"error: --record times a smoke run from scratch, and {root} holds finished runs: "
                         "pass a new --root")
    trainings = [run for run in runs if run.script == "train"]
    try:  # a bad override stops here, before anything is launched
        configs = dict(zip(trainings, reproduce.run_configs(trainings, compose_config), strict=True))
    except (HydraException, OmegaConfBaseException, EmanetError) as error:
        raise SystemExit(f"error: {' '.join(args.overrides)}: {' '.join(str(error).split())}") from None
    # The demo's data is generated by the first run that reads it.
    missing = [] if args.smoke else reproduce.missing_prerequisites(list(configs.values()))

    if args.dry_run:
        lines = reproduce.plan_lines(runs, costs(runs, configs, args.assumed_tflops), args.assumed_tflops)
        print("\n".join(lines))
        print("\n".join([f"{len(missing)} missing prerequisite(s)" + (":" if missing else ""), *missing]))
        sys.exit(2 if missing else 0)
    if missing:
        print("\n".join(missing), file=sys.stderr)
        print(f"error: {len(missing)} prerequisite(s) missing (above); nothing launched", file=sys.stderr)
        sys.exit(2)

    reproduce.check_recorded_settings(root / "reproduce_paper.json", {"overrides": job_overrides, "smoke": args.smoke})
    sweeps = reproduce.unfinished_sweeps(runs)
    log.info("%d of %d runs finished; %d multirun(s) to launch", sum(r.finished for r in runs), len(runs), len(sweeps))
    failures = reproduce.launch(sweeps, hydra_overrides, reproduce.uses_cluster_launcher(hydra_overrides))
    # Table 1's complexity columns describe the paper's networks, which a smoke test does not train.
    complexity = measure(513) if "table1" in args.parts and not args.smoke else []
    title = " (smoke test: demo data and network)" if args.smoke else ""
    for path in reproduce.write_paper_tables(root, runs, args.parts, complexity, args.max_stages, title):
        print(f"written: {path}")
    for line in failures:
        print(f"error: {line}", file=sys.stderr)
    if failures:
        sys.exit(1)
    if args.record:
        command = " ".join(["python scripts/reproduce_paper.py", *(sys.argv[1:] if argv is None else argv)])
        result = {
            "overrides": args.overrides, "runs": len(runs), "jobs_at_once": jobs_at_once(trainings[0], hydra_overrides),
            "wall_seconds": round(time.perf_counter() - started, 1), "load_average": round(load_average, 2),
        }
        print(json.dumps(append_record("paper_smoke", command, result)))
        rebuild_table("paper_smoke", smoke_table)


if __name__ == "__main__":
    main()
