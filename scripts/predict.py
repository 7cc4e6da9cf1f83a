"""Segment image files with a trained checkpoint.

    python scripts/predict.py checkpoint=PATH input=photos/ [experiment=...] [eval=ss] [eval.amp=bf16]

``input`` is an image, a folder (searched recursively) or a list ``input=[a.jpg,b/]``.
The images are segmented with the ``eval`` protocol of the experiment (multi-scale +
flip by default; ``eval=ss`` for one pass, ``eval.mode=slide`` for large photos) and
written into the run directory (``runs/<experiment>/predict_<date>``, or
``hydra.run.dir=...``): ``predictions/<id>.png`` (class indices as VOC palette PNGs),
``overlays/<id>.jpg`` (prediction colours over the image), ``predictions.json`` (the
settings, the class names and the file each id came from) and ``config.yaml``. A file
named ``photo.jpg`` gets the id ``photo``; inside a folder, the id keeps the sub-folders.
"""

import sys

import hydra
from omegaconf import DictConfig

from emanet.cli import quote_path_overrides, run_job
from emanet.engine.predict import predict_files


@hydra.main(version_base=None, config_path="../configs", config_name="predict")
def main(cfg: DictConfig) -> None:
    run_job(predict_files, cfg)


if __name__ == "__main__":
    sys.argv[1:] = quote_path_overrides(sys.argv[1:])
    main()
