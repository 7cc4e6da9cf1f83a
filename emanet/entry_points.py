"""The Hydra applications: ``emanet-train``, ``emanet-evaluate`` and ``emanet-predict``.

``[project.scripts]`` of pyproject.toml installs them; ``train.py``, ``evaluate.py`` and
``scripts/predict.py`` of a checkout call the same functions. Each reads the configs shipped
inside the package (:data:`emanet.cli.CONFIG_DIR`), so an installed copy runs from any
folder, and writes its run directory (``runs/...``) and the demo's data (``data/``, or
``$EMANET_DATA_ROOT``) under the current one. Hydra would name a job after the module of
its task function (``entry_points``); the primary configs set ``hydra.job.name`` instead,
which names the run directory's log file (``train.log``, ``evaluate.log``, ``predict.log``).
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import hydra
from omegaconf import DictConfig

from emanet.cli import CONFIG_DIR, quote_path_overrides, refuse_unknown_overrides, run_job
from emanet.engine.evaluate import evaluate_checkpoint
from emanet.engine.predict import predict_files
from emanet.engine.train import train


@hydra.main(version_base=None, config_path=str(CONFIG_DIR), config_name="train")
def train_app(cfg: DictConfig) -> None:
    run_job(train, cfg)


@hydra.main(version_base=None, config_path=str(CONFIG_DIR), config_name="evaluate")
def evaluate_app(cfg: DictConfig) -> None:
    run_job(evaluate_checkpoint, cfg)


@hydra.main(version_base=None, config_path=str(CONFIG_DIR), config_name="predict")
def predict_app(cfg: DictConfig) -> None:
    run_job(predict_files, cfg)


def run_hydra_app(config_name: str, app: Callable[[], None]) -> None:
    """Run ``app`` on the command line: paths Hydra's grammar would reject quoted, and a typo
    in a key or option refused in one line (exit 2) before Hydra creates a run directory."""
    sys.argv[1:] = quote_path_overrides(sys.argv[1:])
    refuse_unknown_overrides(config_name, sys.argv[1:])
    app()


def train_main() -> None:
    """``emanet-train [experiment=NAME] [key=value ...]``: train, then evaluate on the val split."""
    run_hydra_app("train", train_app)


def evaluate_main() -> None:
    """``emanet-evaluate checkpoint=PATH [experiment=...] [eval=ss|ms_flip]``."""
    run_hydra_app("evaluate", evaluate_app)


def predict_main() -> None:
    """``emanet-predict checkpoint=PATH input=photos/ [experiment=...]``: segment image files."""
    run_hydra_app("predict", predict_app)
