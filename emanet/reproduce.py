"""The paper's experiments as runs under one root: which trainings and evaluations there are,
what each needs, what it costs, how they are launched as Hydra multiruns, and the tables.

Used by ``scripts/reproduce_paper.py`` (every table) and ``scripts/iteration_table.py`` (the
iteration table of any experiment). A run is a Hydra job of ``train.py`` or ``evaluate.py``
whose run directory is finished once it holds ``metrics.json``; the runs that differ in one
override only (``experiment``, ``model.ema.train_stages``...) are launched as one multirun
(``-m key=a,b,c``), which a cluster launcher (``hydra/launcher=submitit_slurm``) submits as
one job array. An unfinished run is launched again into the same directory, where the
trainer resumes from its last checkpoint.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import sysconfig
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from emanet.data.prepare import EXPECTED_COUNTS
from emanet.errors import ConfigError
from emanet.io import write_json
from emanet.models.pretrained import torchvision_weights
from emanet.paper_numbers import BEYOND_EXPERIMENTS, TABLE1_ROWS
from emanet.run_results import read_metrics
from emanet.tables import iteration_rows, write_beyond_table, write_iteration_table, write_ranking_table, write_table1

log = logging.getLogger("reproduce")

PARTS = ("table1", "table3", "table4", "iteration", "beyond")
ITERATION_EXPERIMENT = "voc_r50_ablation"
# Tables 3 and 4 list EMANet on both backbones; the ResNet-50 runs start from the release's
# ResNet-50, as the ablation experiment does.
RANKING_EXPERIMENTS = {"table3": "context_emanet512", "table4": "cocostuff10k_emanet512"}
RESNET50 = {
    "model.backbone.depth": "50",
    "model.backbone.pretrained": "'${data_root}/pretrained/resnet50_deep_stem.pth'",
}
# --smoke: the demo's data and a tiny network for every experiment. The head keys are set
# with ++ for every head (a head ignores the others' keys), so that the runs of a multirun
# still differ in their experiment only.
SMOKE_HEAD_WIDTH = "32"
# The throughput assumed where docs/benchmarks.jsonl has no measurement of the run on a GPU:
# about what convolutional training sustains on one H100-class GPU (a tenth of its dense bf16 peak).
ASSUMED_TFLOPS = 100.0


@dataclass(frozen=True)
class Run:
    """One training or evaluation: the Hydra job ``script -m`` runs for one sweep value."""

    part: str  # table1 | table3 | table4 | iteration | beyond
    row: str  # the table row or cell it fills
    script: str  # train | evaluate
    sweep_dir: Path
    subdir: str  # hydra.sweep.subdir, which Hydra resolves to ``name`` for this job
    name: str
    overrides: tuple[tuple[str, str], ...]  # the job's config overrides, the swept key among them
    sweep_key: str
    needs: Path | None = None  # the training run whose checkpoint an evaluation reads
    cell: tuple[int, int] | None = None  # an iteration-table evaluation's (train_stages, eval_stages)

    @property
    def run_dir(self) -> Path:
        return self.sweep_dir / self.name

    @property
    def finished(self) -> bool:
        return read_metrics(self.run_dir) is not None

    def override_list(self) -> list[str]:
        return [f"{key}={value}" for key, value in self.overrides]


# ----------------------------------------------------------------------------- overrides


def split_hydra_overrides(overrides: Sequence[str]) -> tuple[list[str], list[str]]:
    """(the job's config overrides, Hydra's own: ``hydra/launcher=...``, ``hydra.launcher.*=...``).
    Hydra's are passed to every ``-m`` call but are not part of what a run computes."""
    hydra = [o for o in overrides if o.lstrip("+~").startswith(("hydra/", "hydra."))]
    return [o for o in overrides if o not in hydra], hydra


def as_pairs(overrides: Sequence[str]) -> dict[str, str]:
    pairs = {}
    for override in overrides:
        key, separator, value = override.partition("=")
        if not separator:
            raise ConfigError(f"{override!r} is not a key=value override (e.g. runtime.threads=1)")
        pairs[key] = value
    return pairs


# Launchers whose jobs run on this machine: Hydra's basic one (one after another in the
# multirun's process) and submitit's local one (as many at once as the cores hold,
# hydra.sweeper.max_batch_size in configs/train.yaml).
LOCAL_LAUNCHERS = ("basic", "submitit_local")


def chosen_launcher(hydra_overrides: Sequence[str]) -> str:
    """The ``hydra/launcher=...`` of the overrides; Hydra's default is ``basic``."""
    choices = [o.partition("=")[2] for o in hydra_overrides if o.lstrip("+").startswith("hydra/launcher=")]
    return choices[-1] if choices else "basic"


def uses_cluster_launcher(hydra_overrides: Sequence[str]) -> bool:
    """True when the chosen launcher runs its jobs elsewhere (a SLURM preset): multiruns
    may then be started together. A local launcher's multiruns go one after another, each
    already taking what the machine holds: together, they would multiply that."""
    return chosen_launcher(hydra_overrides) not in LOCAL_LAUNCHERS


def check_recorded_settings(record: Path, settings: dict) -> None:
    """Record the settings the runs under ``record.parent`` are made with, or refuse other
    ones: the runs found there would not be the ones asked for."""
    if record.is_file():
        recorded = json.loads(record.read_text())
        if recorded != settings:
            raise ConfigError(
                f"{record.parent} holds runs made with {recorded}, not {settings} ({record}): "
                "re-run with those, or pass --root DIR for the new settings"
            )
        return
    write_json(settings, record)


def smoke_overrides(demo: DictConfig, iterations: int, side_by_side: bool) -> dict[str, str]:
    """The demo's data, network and data loading (``demo``: the composed ``experiment=demo``
    config) and a schedule of ``iterations`` steps for any experiment: the whole pipeline in
    minutes on CPU. ``side_by_side``: the launcher runs several jobs at once (any but the
    basic one)."""
    backbone, model = demo.model.backbone, demo.model
    multi_grid = ",".join(str(v) for v in backbone.multi_grid)
    smoke = {
        "dataset": "demo",
        # A demo folder of its own: one of other settings is refused, never rebuilt.
        "dataset.root": "${data_root}/demo_smoke/VOC2012",
        "dataset.generate.num_train": "4",
        "dataset.generate.num_val": "2",
        "model.backbone.depth": str(backbone.depth),
        "model.backbone.width": str(backbone.width),
        "model.backbone.multi_grid": f"[{multi_grid}]",
        "model.backbone.pretrained": "null",
        "model.bn_momentum": str(model.bn_momentum),
        "++model.mid_channels": str(model.mid_channels),
        "++model.ema.channels": str(model.ema.channels),
        "++model.ema.num_bases": str(model.ema.num_bases),
        "++model.channels": SMOKE_HEAD_WIDTH,
        "++model.aspp.channels": SMOKE_HEAD_WIDTH,
        "++model.psa.channels": SMOKE_HEAD_WIDTH,
        "++model.psa.attention_size": "5",
        "++model.attention_channels": SMOKE_HEAD_WIDTH,
        "schedule.iterations": str(iterations),
        "schedule.batch_size": "2",
        "schedule.log_every": "1",
        "dataset.crop_size": str(demo.dataset.crop_size),
        "eval.crop_size": str(demo.eval.crop_size),
        "eval.stride": str(demo.eval.stride),
        # A handful of tiny images: the experiments' loader processes would cost more to
        # start and stop than the loading they take over.
        "runtime.num_workers": str(demo.runtime.num_workers),
    }
    if side_by_side:
        # Jobs this small gain little from a second thread, and submitit_local runs as many
        # at once as there are cores at one thread each, but one at a time at torch's
        # default of a thread per core: on 2 cores 4 min 53 s against 10 min 24 s. One
        # after another (the basic launcher) they are faster at the default: 1 min 43 s
        # against 2 min 14 s (docs/benchmarks.md, "The paper's smoke run").
        smoke["runtime.threads"] = "1"
    return smoke


# --------------------------------------------------------------------------------- plan


def table_runs(root: Path, parts: Sequence[str], shared: dict[str, str]) -> list[Run]:
    """The trainings of Tables 1, 3 and 4 and beyond the paper (those of ``parts``): every
    ResNet-101 experiment of the paper in ROOT/resnet101/<experiment>, the ResNet-50 ones in
    ROOT/resnet50/<experiment>, those beyond it (each with its own backbone) in
    ROOT/beyond/<experiment>, so each folder is one multirun over ``experiment``. Each
    training ends with the experiment's evaluation (multi-scale + flip, the single-scale
    result beside it)."""
    rows = []  # (part, row, experiment, depth overrides, folder)
    if "table1" in parts:
        rows += [("table1", method, experiment, {}, "resnet101") for experiment, method in TABLE1_ROWS.items()]
    for part, experiment in RANKING_EXPERIMENTS.items():
        if part in parts:
            rows += [(part, "EMANet (ResNet-101)", experiment, {}, "resnet101"),
                     (part, "EMANet (ResNet-50)", experiment, RESNET50, "resnet50")]
    if "beyond" in parts:
        rows += [("beyond", experiment, experiment, {}, "beyond") for experiment in BEYOND_EXPERIMENTS]
    runs = []
    for part, row, experiment, depth, folder in rows:
        overrides = {"experiment": experiment, **depth, **shared}
        runs.append(Run(part, row, "train", root / folder, "${name}", experiment, tuple(overrides.items()),
                        "experiment"))
    return runs


def iteration_runs(
    root: Path, shared: dict[str, str], stages: Sequence[int], max_stages: int, eval_protocol: str
) -> list[Run]:
    """The iteration table: one training per T in ``stages`` into ROOT/T<t> (one multirun over
    ``model.ema.train_stages``), each evaluated with every eval_stages from T to ``max_stages`` into
    ROOT/T<t>/eval_<protocol>_T<t_eval>. ``shared``: the overrides of every run (the experiment
    among them).

    The evaluations are one multirun too, over (train_stages, eval_stages) pairs,
    ``+iteration_cell={train:T,eval:T'}``, from which the checkpoint and both stage keys are
    interpolated: a sweep over the two keys would be their full product, half of it
    eval_stages < train_stages."""
    runs = []
    protocol = {"eval": eval_protocol}
    for t_train in stages:
        overrides = {**shared, **protocol, "model.ema.train_stages": str(t_train)}
        runs.append(Run("iteration", f"train_stages={t_train}", "train", root, "T${model.ema.train_stages}",
                        f"T{t_train}", tuple(overrides.items()), "model.ema.train_stages"))
    evaluation = {
        **shared, **protocol,
        "checkpoint": f"'{root}/T${{iteration_cell.train}}/checkpoints/last.pt'",
        "model.ema.train_stages": "${iteration_cell.train}",
        "model.ema.eval_stages": "${iteration_cell.eval}",
    }
    for t_train in stages:
        for t_eval in range(t_train, max_stages + 1):
            overrides = {**evaluation, "+iteration_cell": f"{{train:{t_train},eval:{t_eval}}}"}
            runs.append(Run(
                "iteration", f"train_stages={t_train}, eval_stages={t_eval}", "evaluate", root,
                f"T${{iteration_cell.train}}/eval_{eval_protocol}_T${{iteration_cell.eval}}",
                f"T{t_train}/eval_{eval_protocol}_T{t_eval}", tuple(overrides.items()), "+iteration_cell",
                needs=root / f"T{t_train}", cell=(t_train, t_eval),
            ))
    return runs


def paper_runs(
    root: Path, parts: Sequence[str], job_overrides: Sequence[str], smoke: dict[str, str] | None, max_stages: int
) -> list[Run]:
    """Every run behind the paper's tables in ``parts``, with the user's overrides (and the
    smoke test's, which win) on top of each experiment's."""
    shared = {**as_pairs(job_overrides), **(smoke or {})}
    runs = table_runs(root, parts, shared)
    if "iteration" in parts:
        shared_iteration = {"experiment": ITERATION_EXPERIMENT, **shared}
        runs += iteration_runs(root / "iteration", shared_iteration, range(1, max_stages + 1), max_stages, "ss")
    return runs


# ----------------------------------------------------------------------------- launching


def entry_point(script: str) -> Path:
    """The console script ``emanet-<script>`` (pyproject.toml's ``[project.scripts]``: the
    program of train.py or evaluate.py) of the installed package, which a multirun runs
    with this interpreter: beside it, or else on the PATH."""
    name = f"emanet-{script}"
    found = shutil.which(name, path=sysconfig.get_path("scripts")) or shutil.which(name)
    if found is None:
        raise ConfigError(f"{name} not found: install the package (pip install -e .) to launch {script} runs")
    return Path(found)


@dataclass
class Sweep:
    """The unfinished runs launched by one ``script -m`` call: same script, sweep directory
    and overrides but for ``sweep_key``."""

    runs: list[Run] = field(default_factory=list)

    @property
    def needs(self) -> set[Path]:
        return {run.needs for run in self.runs if run.needs is not None}

    def command(self, hydra_overrides: Sequence[str]) -> list[str]:
        first = self.runs[0]
        values = ",".join(dict(run.overrides)[first.sweep_key] for run in self.runs)
        overrides = [
            f"{key}={values if key == first.sweep_key else value}" for key, value in first.overrides
        ]
        return [
            sys.executable, str(entry_point(first.script)), "-m", *overrides,
            f"hydra.sweep.dir={first.sweep_dir}", f"hydra.sweep.subdir={first.subdir}", *hydra_overrides,
        ]

    def describe(self) -> str:
        first = self.runs[0]
        names = ", ".join(run.name for run in self.runs)
        return f"{first.script} {len(self.runs)} run(s) in {first.sweep_dir}: {names}"


def unfinished_sweeps(runs: Sequence[Run]) -> list[Sweep]:
    sweeps: dict[tuple, Sweep] = {}
    for run in runs:
        if run.finished:
            continue
        shared = tuple((key, value) for key, value in run.overrides if key != run.sweep_key)
        key = (run.script, run.sweep_dir, run.subdir, run.sweep_key, shared)
        sweeps.setdefault(key, Sweep()).runs.append(run)
    return list(sweeps.values())


def launch(sweeps: Sequence[Sweep], hydra_overrides: Sequence[str], together: bool) -> list[str]:
    """Run every sweep once the trainings it evaluates have finished: all that can start at
    once together (``together``: a cluster launcher) or one after another. Returns a line
    for each sweep that failed or could not start."""
    problems = []
    pending = list(sweeps)
    running: dict[Future, Sweep] = {}
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=max(1, len(sweeps))) as pool:
        while pending or running:
            ready = [s for s in pending if all(read_metrics(path) is not None for path in s.needs)]
            waiting_on = {run.run_dir for s in [*pending, *running.values()] for run in s.runs}
            stuck = [s for s in pending if s not in ready and (not s.needs & waiting_on or not running and not ready)]
            for sweep in stuck:
                # Start the runs whose trainings did finish; the others cannot run.
                pending.remove(sweep)
                blocked = Sweep([run for run in sweep.runs if read_metrics(run.needs) is None])
                runnable = Sweep([run for run in sweep.runs if read_metrics(run.needs) is not None])
                missing = ", ".join(str(p) for p in sorted(blocked.needs))
                problems.append(f"not started: {blocked.describe()} (its training did not finish: {missing})")
                if runnable.runs:
                    pending.append(runnable)
                    ready.append(runnable)
            for sweep in ready:
                if running and not together:
                    break
                pending.remove(sweep)
                command = sweep.command(hydra_overrides)
                log.info("starting %s\n  %s", sweep.describe(), " ".join(command))
                running[pool.submit(subprocess.run, command)] = sweep
            if not running:
                continue
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                sweep = running.pop(future)
                status = future.result().returncode
                elapsed = time.monotonic() - started
                unfinished = [run.name for run in sweep.runs if not run.finished]
                if status or unfinished:
                    problems.append(f"exit status {status}: {sweep.describe()}; unfinished: {', '.join(unfinished)}")
                log.info("%s %s after %.0f s", "failed" if status else "finished", sweep.describe(), elapsed)
    return problems


# ------------------------------------------------------------------------- prerequisites


def prepare_command(dataset: str, data_root: Path) -> str:
    command = f"python scripts/prepare_dataset.py {dataset}"
    default_root = Path(os.environ.get("EMANET_DATA_ROOT", "data")).resolve()
    return command if data_root.resolve() == default_root else f"EMANET_DATA_ROOT={data_root} {command}"


def dataset_problems(cfg: DictConfig) -> list[str]:
    """A line for each split the run reads that is missing or not of its published size."""
    dataset = cfg.dataset
    problems = []
    for split in (dataset.train_split, dataset.val_split):
        split_file = Path(dataset.root) / dataset.layout.split.format(split=split)
        expected = EXPECTED_COUNTS.get(dataset.name, {}).get(split)
        size = f", {expected} images" if expected else ""
        make = prepare_command(dataset.name, Path(cfg.data_root))
        if not split_file.is_file():
            problems.append(f"missing: {split_file} ({dataset.name} {split} split{size}): {make}")
            continue
        count = sum(1 for line in split_file.read_text().splitlines() if line.strip())
        if expected is not None and count != expected:
            problems.append(
                f"incomplete: {split_file} lists {count} images, the published {dataset.name} {split} split "
                f"{expected}: {make}"
            )
    return problems


def torchvision_weights_file(depth: int) -> Path:
    url = torchvision_weights(depth).url
    return Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]


def backbone_problems(cfg: DictConfig) -> list[str]:
    """A line for ImageNet weights the run starts from that are not there."""
    backbone = cfg.model.backbone
    if backbone.pretrained is None:
        return []
    if backbone.pretrained == "torchvision":
        path = torchvision_weights_file(backbone.depth)
        if path.is_file():
            return []
        fetch = (f"python -c \"import torchvision; torchvision.models.get_model_weights('resnet{backbone.depth}')"
                 ".IMAGENET1K_V1.get_state_dict(progress=True)\"")
        return [f"missing: {path} (torchvision ResNet-{backbone.depth} weights): {fetch}"]
    path = Path(backbone.pretrained).expanduser()
    if path.is_file():
        return []
    if backbone.stem == "v1c":
        source = (f"mmsegmentation's ImageNet ResNetV1c-{backbone.depth} (open-mmlab://resnet{backbone.depth}_v1c) "
                  "there (docs/models.md, \"mmsegmentation's EMANet\")")
    else:
        source = (f"the release's ImageNet deep-stem ResNet-{backbone.depth} there "
                  "(docs/models.md, \"Pretrained backbones\")")
    return [f"missing: {path} (model.backbone.pretrained): save {source}"]


def missing_prerequisites(configs: Sequence[DictConfig]) -> list[str]:
    """Every dataset split and pretrained backbone the runs need that is not ready, once each."""
    problems: list[str] = []
    for cfg in configs:
        for line in [*dataset_problems(cfg), *backbone_problems(cfg)]:
            if line not in problems:
                problems.append(line)
    return problems


# --------------------------------------------------------------------------------- costs


@dataclass(frozen=True)
class Cost:
    gpu_hours: float
    source: str  # "estimate" or "measured on <GPU>"


def benchmark_variant(cfg: DictConfig) -> str:
    """The row of scripts/benchmark.py's train benchmark that runs as this config trains."""
    precision = "bf16" if cfg.runtime.amp == "bf16" else "fp32"
    return f"{precision}{'_cl' if cfg.runtime.channels_last else ''}{'_compile' if cfg.runtime.compile else ''}"


def measured_images_per_second(records: Sequence[dict], model: str, cfg: DictConfig) -> tuple[float, str] | None:
    """(images/s, GPU) of the newest GPU measurement of this model, crop and training variant."""
    variant = benchmark_variant(cfg)
    for record in reversed(records):
        gpu = record.get("machine", {}).get("gpu")
        if gpu and record.get("model") == model and record.get("crop") == cfg.dataset.crop_size:
            for row in record.get("rows", []):
                if row.get("variant") == variant:
                    return row["images_per_second"], gpu
    return None


def evaluation_flops(cfg: DictConfig, crop_step_flops: float) -> float:
    """An evaluation's FLOPs: each validation image taken as one training crop, its forward
    pass a third of a training step, once per scale (times its area) and flip."""
    images = EXPECTED_COUNTS.get(cfg.dataset.name, {}).get(cfg.dataset.val_split, 0)
    passes = sum(scale * scale for scale in cfg.eval.scales) * (2 if cfg.eval.flip else 1)
    return images * passes * crop_step_flops / 3


def run_cost(
    run: Run, cfg: DictConfig, crop_step_flops: float, measured: tuple[float, str] | None, tflops: float
) -> Cost:
    """GPU-hours of a run: training steps (and the final evaluation) from the measured
    throughput where there is one, else from the FLOPs of a training step on one crop
    (``crop_step_flops``) at ``tflops`` sustained."""
    crops = cfg.schedule.iterations * cfg.schedule.batch_size if run.script == "train" else 0
    if measured is not None and run.script == "train":
        images_per_second, gpu = measured
        return Cost(crops / images_per_second / 3600, f"measured on {gpu}")
    flops = crops * crop_step_flops + evaluation_flops(cfg, crop_step_flops)
    return Cost(flops / (tflops * 1e12) / 3600, "estimate")


def plan_lines(runs: Sequence[Run], costs: Sequence[Cost], tflops: float) -> list[str]:
    """The run list: part, kind, finished, GPU-hours, run directory, overrides."""
    lines = [f"{len(runs)} runs ({sum(r.finished for r in runs)} finished):"]
    for run, cost in zip(runs, costs, strict=True):
        state = "finished" if run.finished else "to run"
        mark = "" if cost.source == "estimate" else f" ({cost.source})"
        lines.append(
            f"  {run.part:<9} {run.script:<8} {state:<8} {cost.gpu_hours:8.2f} GPU-h{mark}  {run.run_dir}  "
            f"{' '.join(run.override_list())}"
        )
    left = sum(cost.gpu_hours for run, cost in zip(runs, costs, strict=True) if not run.finished)
    total = sum(cost.gpu_hours for cost in costs)
    estimated = sum(cost.source == "estimate" for cost in costs)
    lines.append(f"GPU-hours: {total:.1f} in all, {left:.1f} still to run")
    if estimated:
        lines.append(
            f"  {estimated} of them an estimate: no GPU measurement of theirs in docs/benchmarks.jsonl, so the "
            f"training FLOPs (counted on the meta device) at an assumed {tflops:g} TFLOP/s sustained, "
            "evaluations from the forward FLOPs"
        )
    return lines


def run_configs(runs: Sequence[Run], compose: Callable[[str, list[str]], DictConfig]) -> list[DictConfig]:
    """Each run's config as its script composes it (``compose(script, overrides)``), resolved."""
    configs = []
    for run in runs:
        cfg = compose(run.script, run.override_list())
        OmegaConf.resolve(cfg)
        configs.append(cfg)
    return configs


# -------------------------------------------------------------------------------- tables


def iteration_results(runs: Sequence[Run]) -> dict[tuple[int, int], float]:
    """(train_stages, eval_stages) -> mIoU of the finished iteration-table evaluations among ``runs``."""
    results = {}
    for run in runs:
        metrics = read_metrics(run.run_dir) if run.cell is not None else None
        if metrics is not None:
            results[run.cell] = metrics["mIoU"]
    return results


def write_paper_tables(
    root: Path, runs: Sequence[Run], parts: Sequence[str], complexity: Sequence[dict], max_stages: int, title: str
) -> list[Path]:
    """The tables of ``parts`` from the finished runs, as md, csv and png files in ``root``."""
    finished = {}
    for run in runs:
        metrics = read_metrics(run.run_dir) if run.script == "train" else None
        if metrics is not None:
            finished.setdefault(run.part, {})[run.row] = metrics
    paths = []
    if "table1" in parts:
        paths += write_table1(finished.get("table1", {}), complexity, root)
    for part in ("table3", "table4"):
        if part in parts:
            paths += write_ranking_table(int(part[-1]), finished.get(part, {}), root)
    if "beyond" in parts:  # trained here; published weights come from evaluations given to paper_tables.py
        paths += write_beyond_table({(row, False): m for row, m in finished.get("beyond", {}).items()}, root)
    if "iteration" in parts:
        rows = iteration_rows(iteration_results(runs), max_stages)
        paths += write_iteration_table(rows, max_stages, root, f"Iteration table: {ITERATION_EXPERIMENT}{title}")
    return paths
