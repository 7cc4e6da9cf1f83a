"""The whole reproduction of the paper's tables: the runs of :mod:`emanet.reproduce` planned,
their prerequisites checked, their GPU-hours estimated, the unfinished ones launched, the
tables written, and a smoke run's wall time recorded. ``scripts/reproduce_paper.py`` parses
its command line and calls :func:`reproduce_paper`."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException

from emanet import reproduce
from emanet.benchmarks.complexity import PAPER_SIZE, measure
from emanet.benchmarks.flops import config_train_step_flops
from emanet.benchmarks.records import append_record, model_name, rebuild_table, records, rows_table
from emanet.cli import compose_config
from emanet.errors import ConfigError, EmanetError

SMOKE_ITERATIONS = 2
log = logging.getLogger("reproduce_paper")


def chosen_parts(only: str | None) -> list[str]:
    """The parts of a comma-separated ``--only`` (every part without it)."""
    parts = list(reproduce.PARTS) if only is None else [part.strip() for part in only.split(",")]
    if not parts or any(part not in reproduce.PARTS for part in parts):
        raise ConfigError(f"--only takes parts among {','.join(reproduce.PARTS)}, got {only!r}")
    return parts


def costs(runs: list[reproduce.Run], configs: dict, tflops: float, docs: Path) -> list[reproduce.Cost]:
    """Each run's GPU-hours (``configs``: the runs' configs composed so far; the others are
    composed here), measured where ``docs``'s benchmarks.jsonl has a GPU measurement; the
    FLOPs of one training step are counted once per network."""
    others = [run for run in runs if run not in configs]
    configs = {**configs, **dict(zip(others, reproduce.run_configs(others, compose_config), strict=True))}
    measurements = records("train", docs)
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


# The published table of the smoke runs timed with --record.
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


def reproduce_paper(
    root: Path | None, parts: Sequence[str], overrides: Sequence[str], docs: Path, command: str, *,
    smoke: bool = False, dry_run: bool = False, record: bool = False, max_stages: int = 8,
    assumed_tflops: float = reproduce.ASSUMED_TFLOPS,
) -> int:
    """Run what the tables of ``parts`` lack under ``root`` (default runs/paper, or
    runs/paper_smoke with ``smoke``) and write the tables; the exit status: 0, 1 if a run
    failed, 2 if a prerequisite is missing. ``dry_run``: list the runs and their GPU-hours
    (from ``docs``'s benchmarks.jsonl where measured) and the missing prerequisites only.
    ``record``: publish the smoke run's wall time, of ``command``, in ``docs``. Raises
    :class:`ConfigError` for a bad override or a root that does not fit."""
    started, load_average = time.perf_counter(), os.getloadavg()[0]
    job_overrides, hydra_overrides = reproduce.split_hydra_overrides(overrides)
    smoke_settings = None
    if smoke:
        demo = compose_config("train", ["experiment=demo"])
        side_by_side = reproduce.chosen_launcher(hydra_overrides) != "basic"
        smoke_settings = reproduce.smoke_overrides(demo, SMOKE_ITERATIONS, side_by_side)
    root = (root or Path("runs") / ("paper_smoke" if smoke else "paper")).resolve()
    runs = reproduce.paper_runs(root, parts, job_overrides, smoke_settings, max_stages)
    if record and any(run.finished for run in runs):
        raise ConfigError(f"--record times a smoke run from scratch, and {root} holds finished runs: pass a new --root")
    trainings = [run for run in runs if run.script == "train"]
    try:  # a bad override stops here, before anything is launched
        configs = dict(zip(trainings, reproduce.run_configs(trainings, compose_config), strict=True))
    except (HydraException, OmegaConfBaseException, EmanetError) as error:
        raise ConfigError(f"{' '.join(overrides)}: {' '.join(str(error).split())}") from None
    # The demo's data is generated by the first run that reads it.
    missing = [] if smoke else reproduce.missing_prerequisites(list(configs.values()))

    if dry_run:
        print("\n".join(reproduce.plan_lines(runs, costs(runs, configs, assumed_tflops, docs), assumed_tflops)))
        print("\n".join([f"{len(missing)} missing prerequisite(s)" + (":" if missing else ""), *missing]))
        return 2 if missing else 0
    if missing:
        print("\n".join(missing), file=sys.stderr)
        print(f"error: {len(missing)} prerequisite(s) missing (above); nothing launched", file=sys.stderr)
        return 2

    reproduce.check_recorded_settings(root / "reproduce_paper.json", {"overrides": job_overrides, "smoke": smoke})
    sweeps = reproduce.unfinished_sweeps(runs)
    log.info("%d of %d runs finished; %d multirun(s) to launch", sum(r.finished for r in runs), len(runs), len(sweeps))
    failures = reproduce.launch(sweeps, hydra_overrides, reproduce.uses_cluster_launcher(hydra_overrides))
    # Table 1's complexity columns describe the paper's networks, which a smoke test does not train.
    complexity = measure(PAPER_SIZE) if "table1" in parts and not smoke else []
    title = " (smoke test: demo data and network)" if smoke else ""
    for path in reproduce.write_paper_tables(root, runs, parts, complexity, max_stages, title):
        print(f"written: {path}")
    for line in failures:
        print(f"error: {line}", file=sys.stderr)
    if failures:
        return 1
    if record:
        result = {
            "overrides": list(overrides), "runs": len(runs),
            "jobs_at_once": jobs_at_once(trainings[0], hydra_overrides),
            "wall_seconds": round(time.perf_counter() - started, 1), "load_average": round(load_average, 2),
        }
        print(json.dumps(append_record(docs, "paper_smoke", command, result)))
        rebuild_table(docs, "paper_smoke", smoke_table)
    return 0
