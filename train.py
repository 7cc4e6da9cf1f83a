"""Train a segmentation network: `python train.py experiment=voc_emanet512 [key=value ...]`.

With no arguments, trains and evaluates the built-in demo on synthetic data.
"""

import sys

import hydra
from omegaconf import DictConfig

from emanet.cli import quote_path_overrides, refuse_unknown_overrides, run_job
from emanet.engine.train import train


@hydra.main(version_base=None, config_path="configs", config_name="train")
def main(cfg: DictConfig) -> None:
    run_job(train, cfg)


if __name__ == "__main__":
    sys.argv[1:] = quote_path_overrides(sys.argv[1:])
    refuse_unknown_overrides("train", sys.argv[1:])  # a typo in a key or option: one line, exit 2
    main()
