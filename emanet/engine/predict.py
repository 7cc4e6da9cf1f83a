"""Segmenting image files with a trained checkpoint: ``scripts/predict.py``'s job."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from emanet.data import dataset_class_names
from emanet.data.segmentation import read_image
from emanet.data.transforms import eval_transform
from emanet.engine.amp import AmpSettings
from emanet.engine.checkpoint import checkpoint_file
from emanet.engine.evaluate import (
    eval_inference,
    evaluation_settings,
    load_trained_model,
    prediction_writer,
    protocol_record,
)
from emanet.engine.evaluator import is_multi_scale, predict_classes
from emanet.engine.runtime import configure_runtime, size_grouped_batches
from emanet.errors import ConfigError
from emanet.io import write_json

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def find_images(inputs: Sequence[str]) -> dict[str, Path]:
    """The image files that ``inputs`` name, by the id their outputs are written under.

    An input is an image file (id: its name without suffix) or a folder, searched
    recursively for files ending in one of IMAGE_SUFFIXES (id: the path inside the
    folder without suffix, so sub-folders are kept in the output).
    """
    found: dict[str, Path] = {}
    for entry in inputs:
        path = Path(entry).expanduser()
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            if not files:
                raise ConfigError(f"input={entry}: {path} holds no image files ({' '.join(IMAGE_SUFFIXES)})")
            named = [(file.relative_to(path).with_suffix("").as_posix(), file) for file in files]
        elif path.is_file():
            named = [(path.stem, path)]
        else:
            raise ConfigError(
                f"input={entry}: no such file or folder; pass input=IMAGE, input=FOLDER or input=[A,B,...]"
            )
        for sample_id, file in named:
            if sample_id in found:
                raise ConfigError(
                    f"input: {found[sample_id]} and {file} would both be written as {sample_id}.png; "
                    "rename one or segment them in separate runs"
                )
            found[sample_id] = file
    return found


class ImageFiles(Dataset):
    """Normalised images (3, H, W) of the given files, with their ids."""

    def __init__(self, files: dict[str, Path], mean: Sequence[float], std: Sequence[float]) -> None:
        self.ids = list(files)
        self.files = list(files.values())
        self.transform = eval_transform(mean, std)

    def __len__(self) -> int:
        return len(self.files)

    def image_path(self, index: int) -> Path:
        return self.files[index]

    def __getitem__(self, index: int) -> dict:
        image = read_image(self.files[index], upright=True)
        return {"image": self.transform(image=image)["image"], "id": self.ids[index]}


def input_list(cfg: DictConfig) -> list[str]:
    """``input`` as a list: one path, or a list of them."""
    return [str(entry) for entry in cfg.input] if OmegaConf.is_list(cfg.input) else [str(cfg.input)]


def predict_files(cfg: DictConfig, run_dir: Path) -> dict:
    """``scripts/predict.py``: segment the images of ``input`` with ``checkpoint``.

    Uses the ``eval`` protocol (scales, flip, whole or sliding-window inference,
    precision, EM iterations). Writes ``predictions/<id>.png`` (class-index palette PNGs)
    and ``overlays/<id>.jpg`` into ``run_dir``, as ``eval.save_predictions`` /
    ``eval.save_overlays`` say, with ``config.yaml`` and ``predictions.json`` (settings
    and the file each id came from); returns the contents of the latter.
    """
    if not (cfg.eval.save_predictions or cfg.eval.save_overlays):
        raise ConfigError("eval.save_predictions and eval.save_overlays are both false: nothing would be written")
    files = find_images(input_list(cfg))
    device = configure_runtime(cfg)
    amp = AmpSettings.from_config(cfg.eval, device, key="eval")
    model, checkpoint = load_trained_model(cfg, device, amp)
    model.eval()
    OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
    dataset = ImageFiles(files, cfg.dataset.mean, cfg.dataset.std)
    loader = DataLoader(
        dataset, batch_sampler=size_grouped_batches(dataset, range(len(dataset)), cfg.eval.batch_size),
        num_workers=cfg.runtime.num_workers, pin_memory=device.type == "cuda",
    )
    write = prediction_writer(cfg, run_dir)
    inference = eval_inference(cfg)
    with evaluation_settings(model, cfg) as output_stride:
        for batch in tqdm(loader, desc="predict", disable=not cfg.runtime.progress, dynamic_ncols=True):
            prediction, _ = predict_classes(
                model, batch["image"], device, cfg.eval.scales, cfg.eval.flip, inference, amp
            )
            write(batch, prediction)
    summary = {
        "experiment": cfg.name,
        "checkpoint": str(checkpoint_file(cfg.checkpoint)),
        "iteration": checkpoint.get("iteration"),
        "eval": protocol_record(cfg, amp, output_stride),
        "classes": list(dataset_class_names(cfg.dataset)),
        "images": {sample_id: str(path.resolve()) for sample_id, path in files.items()},
    }
    write_json(summary, run_dir / "predictions.json")
    protocol = "MS+flip" if is_multi_scale(cfg.eval.scales, cfg.eval.flip) else "single scale"
    log.info("segmented %d images (%s); results in %s", len(files), protocol, run_dir)
    return summary
