"""Our runs' results for the tables: metrics.json files read back, and runs sorted into the
rows of the paper's tables."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from omegaconf import OmegaConf

from emanet.engine.evaluator import is_multi_scale
from emanet.paper_numbers import BEYOND_KEYS, RANKING_ROWS, RANKING_TABLES, TABLE1_ROWS

# metrics.json recorded T at evaluation as eval.em_iterations before it took the config
# key's name, eval.eval_stages; runs made then are read as if they had the new name.
LEGACY_EVAL_STAGES_KEY = "em_iterations"


def read_metrics(path: Path) -> dict | None:
    """A run's metrics.json (given the run directory or the file), or None if the run has
    not finished."""
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.json"
    if not path.is_file():
        return None
    metrics = json.loads(path.read_text())
    settings = metrics.get("eval") if isinstance(metrics, dict) else None
    if isinstance(settings, dict) and LEGACY_EVAL_STAGES_KEY in settings and "eval_stages" not in settings:
        settings["eval_stages"] = settings.pop(LEGACY_EVAL_STAGES_KEY)
    return metrics


def single_and_multi_scale(metrics: dict | None) -> tuple[float | None, float | None]:
    """(single-scale mIoU, multi-scale + flip mIoU) of one metrics.json."""
    if metrics is None:
        return None, None
    settings = metrics["eval"]
    if is_multi_scale(settings["scales"], settings["flip"]):
        return metrics.get("single_scale", {}).get("mIoU"), metrics["mIoU"]
    return metrics["mIoU"], None


@dataclass(frozen=True)
class RunResults:
    """Runs sorted into the tables' rows (each row -> its run's metrics.json), and notes on
    the runs left out or trained otherwise than the paper's row."""

    table1: dict[str, dict]  # Table 1 method -> metrics
    table3: dict[str, dict]  # "EMANet (ResNet-<depth>)" -> metrics
    table4: dict[str, dict]
    beyond: dict[tuple[str, bool], dict]  # (experiment, imported) -> metrics
    notes: list[str]


def collect(run_dirs: Sequence[Path]) -> RunResults:
    """Sort run directories (or their metrics.json) into the rows of Tables 1, 3 and 4 and
    the table beyond the paper, by experiment name and backbone depth; where several runs
    fill one row, the last wins."""
    table1, table3, table4, beyond, notes = {}, {}, {}, {}, []
    for given in run_dirs:
        run_dir = Path(given).parent if Path(given).is_file() else Path(given)
        try:
            metrics = read_metrics(run_dir)
        except ValueError as error:  # not JSON
            notes.append(f"{run_dir / 'metrics.json'}: not a metrics.json ({error})")
            continue
        if metrics is None:
            notes.append(f"{run_dir}: no metrics.json (not finished?)")
            continue
        experiment = metrics.get("experiment")
        config_path = run_dir / "config.yaml"
        if not config_path.is_file():
            notes.append(f"{run_dir}: no config.yaml beside metrics.json, so its backbone is unknown; left out")
            continue
        config = OmegaConf.load(config_path)
        depth = OmegaConf.select(config, "model.backbone.depth")
        row = f"EMANet (ResNet-{depth})"
        if experiment in TABLE1_ROWS and depth == 101:
            table1[TABLE1_ROWS[experiment]] = metrics
        elif experiment in RANKING_ROWS and row in RANKING_TABLES[RANKING_ROWS[experiment]]:
            target = table3 if RANKING_ROWS[experiment] == 3 else table4
            target[row] = metrics
        elif (experiment, "imported_from" in metrics) in BEYOND_KEYS:
            beyond[(experiment, "imported_from" in metrics)] = metrics
            continue  # recipes of their own: the auxiliary-head note is about the paper's
        else:
            notes.append(f"{run_dir}: experiment {experiment!r} (depth {depth}) is in none of the tables")
            continue
        aux = OmegaConf.select(config, "model.aux.weight", default=0.0)
        if aux:
            notes.append(f"{run_dir}: trained with an auxiliary head (model.aux.weight={aux}), the paper without")
    return RunResults(table1, table3, table4, beyond, notes)
