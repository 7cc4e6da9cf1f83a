"""Evaluate a checkpoint: `python evaluate.py checkpoint=PATH [experiment=...] [eval=ss|ms_flip]`."""

import sys

import hydra
from omegaconf import DictConfig

from emanet.cli import quote_path_overrides, refuse_unknown_overrides, run_job
from emanet.engine.evaluate import evaluate_checkpoint


@hydra.main(version_base=None, config_path="configs", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    run_job(evaluate_checkpoint, cfg)


if __name__ == "__main__":
    sys.argv[1:] = quote_path_overrides(sys.argv[1:])
    refuse_unknown_overrides("evaluate", sys.argv[1:])  # a typo in a key or option: one line, exit 2
    main()
