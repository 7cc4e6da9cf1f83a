"""Evaluate a checkpoint: `python evaluate.py checkpoint=PATH [experiment=...] [eval=ss|ms_flip]`."""

import hydra
from omegaconf import DictConfig

from emanet.cli import run_job
from emanet.engine.evaluate import evaluate_checkpoint


@hydra.main(version_base=None, config_path="configs", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    run_job(evaluate_checkpoint, cfg)


if __name__ == "__main__":
    main()
