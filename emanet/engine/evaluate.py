"""Evaluating a model on the validation split, and ``evaluate.py``'s job."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from PIL import Image
from torch import nn
from torch.utils.tensorboard import SummaryWriter

from emanet.data import warn_skipped
from emanet.data.palette import colorize, save_label_png
from emanet.data.segmentation import output_name
from emanet.engine.amp import AmpSettings
from emanet.engine.distributed import (
    World,
    broadcast_from_main,
    init_distributed,
    shared_run_dir,
    shutdown_distributed,
)
from emanet.engine.evaluator import eval_inference, evaluate, is_multi_scale, predict, summarize
from emanet.engine.metrics import format_table
from emanet.engine.run_directory import own_run_dir, run_directory_lock
from emanet.engine.runtime import build_eval_loader, configure_runtime
from emanet.engine.segmenter import Segmenter
from emanet.engine.visualize import denormalize, prediction_panel
from emanet.errors import DatasetError
from emanet.io import atomic_write, to_plain, write_json
from emanet.models.segmentor import SegmentationModel, eval_output_stride_of, eval_stages_of
from emanet.plots import evaluation_figures, write_figures

log = logging.getLogger(__name__)


def evaluate_on_val(
    model: nn.Module, cfg: DictConfig, device: torch.device, amp: AmpSettings, writer: SummaryWriter | None = None,
    step: int = 0, world: World | None = None, output_dir: Path | None = None,
) -> dict:
    """Evaluate with the ``eval`` protocol, log the tables, and return the metrics dict.

    With ``model.backbone.eval_output_stride`` set, the backbone is switched to that output
    stride for the evaluation and back afterwards (the paper trains its ablations at OS16
    and evaluates them at OS8). The network runs with ``amp`` (from ``eval.amp`` and
    ``eval.channels_last``) and cuDNN autotuning as ``eval.cudnn_benchmark`` says, for the
    evaluation only. With ``eval.save_predictions`` / ``eval.save_overlays`` the
    predictions are written under ``output_dir``. The per-class IoU bar chart and the
    row-normalised confusion matrix go to ``writer`` (``val/per_class_iou``,
    ``val/confusion_matrix``) and to ``output_dir`` as ``per_class_iou.{png,pdf}`` and
    ``confusion_matrix.{png,pdf}``.
    """
    world = world or World(device=device)
    loader = build_eval_loader(cfg, world, pin_memory=device.type == "cuda")
    dataset = loader.dataset
    with evaluation_settings(model, cfg) as eval_stride:
        result = evaluate(
            model, loader, dataset.num_classes, cfg.eval.scales, cfg.eval.flip, device,
            cfg.dataset.ignore_index, progress=cfg.runtime.progress and world.is_main, total=len(loader),
            inference=eval_inference(cfg), on_prediction=prediction_writer(cfg, output_dir), amp=amp,
        )
        if writer is not None:
            log_prediction_images(model, dataset, cfg, device, writer, step)
    warn_skipped(dataset)
    if int(result.confusion.sum()) == 0:  # every metric would be 0 / 0
        raise DatasetError(
            f"{dataset.root}: split {dataset.split!r} has no labelled pixels to score (every label is "
            f"dataset.ignore_index={cfg.dataset.ignore_index}, or every image was skipped)"
        )
    metrics = summarize(result, dataset.class_names, protocol_record(cfg, amp, eval_stride))
    protocol = "multi-scale + flip" if is_multi_scale(cfg.eval.scales, cfg.eval.flip) else "single scale"
    if world.is_main:
        settings = metrics["eval"]
        title = f"{dataset.split} ({protocol}, {settings['mode']}, T={settings['eval_stages']}, OS{eval_stride})"
        log.info("\n%s", format_table(metrics, title))
        if "single_scale" in metrics:
            single_title = f"{dataset.split} (single scale, {settings['mode']})"
            log.info("\n%s", format_table(metrics["single_scale"], single_title))
    if writer is not None:
        writer.add_scalar("val/mIoU", metrics["mIoU"], step)
        if "single_scale" in metrics:
            writer.add_scalar("val/mIoU_single_scale", metrics["single_scale"]["mIoU"], step)
    if world.is_main and (writer is not None or output_dir is not None):
        figures = evaluation_figures(metrics, result.confusion, dataset.class_names, cfg.dataset.class_colors)
        if writer is not None:
            for name, figure in figures.items():
                writer.add_figure(f"val/{name}", figure, step, close=False)
        if output_dir is not None:
            write_figures(figures, output_dir)
    return metrics


@contextmanager
def evaluation_settings(model: SegmentationModel, cfg: DictConfig) -> Iterator[int]:
    """For the duration: the backbone at ``model.backbone.eval_output_stride`` (if set) and
    cuDNN autotuning as ``eval.cudnn_benchmark`` says; yields the output stride used."""
    train_stride = model.backbone.output_stride
    eval_stride = eval_output_stride_of(cfg)
    training_cudnn_benchmark = torch.backends.cudnn.benchmark
    model.backbone.set_output_stride(eval_stride)
    torch.backends.cudnn.benchmark = cfg.eval.cudnn_benchmark
    try:
        yield eval_stride
    finally:
        model.backbone.set_output_stride(train_stride)
        torch.backends.cudnn.benchmark = training_cudnn_benchmark


def protocol_record(cfg: DictConfig, amp: AmpSettings, output_stride: int) -> dict:
    """How the ``eval`` protocol ran, for metrics.json and predictions.json."""
    return {
        "mode": cfg.eval.mode,
        "scales": [float(scale) for scale in cfg.eval.scales],
        "flip": bool(cfg.eval.flip),
        "crop_size": to_plain(cfg.eval.crop_size) if cfg.eval.mode == "slide" else None,  # a list for [h, w]
        "stride": to_plain(cfg.eval.stride) if cfg.eval.mode == "slide" else None,
        "align_corners": bool(cfg.eval.align_corners),
        "logits_align_corners": bool(eval_inference(cfg).logits_back_align_corners),
        "pad_to_window": bool(cfg.eval.pad_to_window) if cfg.eval.mode == "slide" else None,
        "eval_stages": eval_stages_of(cfg),
        "output_stride": output_stride,
        "precision": str(amp.dtype or torch.float32).removeprefix("torch."),
    }


@torch.no_grad()
def log_prediction_images(model, dataset, cfg, device, writer, step, count: int = 4) -> None:
    """TensorBoard panels of the first ``count`` val samples that load (``dataset.skip_bad``
    turns a bad one into None)."""
    model.eval()
    samples = (dataset[index] for index in range(len(dataset)))
    for index, sample in enumerate(itertools.islice((s for s in samples if s is not None), count)):
        image = sample["image"].unsqueeze(0).to(device)
        probabilities, _ = predict(model, image, [1.0], flip=False, inference=eval_inference(cfg))
        panel = prediction_panel(
            sample["image"], sample["label"], probabilities.argmax(1)[0], cfg.dataset.mean, cfg.dataset.std,
            cfg.dataset.class_colors,
        )
        writer.add_image(f"val/prediction_{index}", panel, step, dataformats="HWC")


def prediction_writer(cfg: DictConfig, output_dir: Path | None) -> Callable[[dict, torch.Tensor], None] | None:
    """Writes ``predictions/<id>.png`` (class indices in a palette PNG of the classes'
    colours, VOC's by default: the format of the PASCAL VOC evaluation server) and
    ``overlays/<id>.jpg``, as ``eval`` asks; an id's file extension (``train/IMG_1.jpg``
    of a folder dataset) is left out of the names."""
    if output_dir is None or not (cfg.eval.save_predictions or cfg.eval.save_overlays):
        return None

    def write(batch: dict, prediction: torch.Tensor) -> None:
        colors = cfg.dataset.class_colors
        for image, classes, sample_id in zip(batch["image"], prediction, batch["id"], strict=True):
            classes = classes.numpy().astype(np.uint8)
            name = output_name(sample_id)
            if cfg.eval.save_predictions:
                path = output_dir / "predictions" / f"{name}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                save_label_png(classes, path, class_colors=colors)
            if cfg.eval.save_overlays:
                path = output_dir / "overlays" / f"{name}.jpg"
                path.parent.mkdir(parents=True, exist_ok=True)
                blend = 0.5 * denormalize(image, cfg.dataset.mean, cfg.dataset.std) + 0.5 * colorize(classes, colors)
                atomic_write(path, partial(Image.fromarray(blend.astype(np.uint8)).save, format="JPEG"))

    return write


def evaluate_checkpoint(cfg: DictConfig, run_dir: Path) -> dict:
    """``evaluate.py``: load ``cfg.checkpoint`` into the configured model and evaluate it.

    Under torchrun every process evaluates its share of the images; rank 0 writes, into
    ``run_dir`` or, where that holds another job's records, a folder of its own inside it
    (:func:`~emanet.engine.run_directory.own_run_dir`), holding its lock meanwhile.
    """
    world = init_distributed(configure_runtime(cfg))
    amp = AmpSettings.from_config(cfg.eval, world.device)
    run_dir, note = broadcast_from_main(own_run_dir(shared_run_dir(run_dir), "evaluate"))
    if note and world.is_main:
        log.warning("%s", note)
    with run_directory_lock(run_dir, world, "evaluate"):
        return evaluate_in_locked_directory(cfg, run_dir, world, amp)


def evaluate_in_locked_directory(cfg: DictConfig, run_dir: Path, world: World, amp: AmpSettings) -> dict:
    segmenter = Segmenter.from_config(cfg, world.device)
    writer = None
    if world.is_main:
        OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
        writer = SummaryWriter(str(run_dir / "tensorboard"))
    trained = segmenter.trained
    metrics = evaluate_on_val(
        segmenter.network, cfg, world.device, segmenter.amp, writer, trained.get("iteration", 0), world,
        output_dir=run_dir,
    )
    if world.is_main:
        writer.close()
        run = {"experiment": cfg.name, "checkpoint": str(segmenter.source), "iteration": trained.get("iteration")}
        if "imported_from" in trained:  # weights trained elsewhere (scripts/import_*_checkpoint.py)
            run["imported_from"] = trained["imported_from"]
        metrics = write_run_metrics(run_dir, run, metrics)
    shutdown_distributed()
    return metrics


def write_run_metrics(run_dir: Path, run: dict, metrics: dict) -> dict:
    """Write ``run`` (experiment, checkpoint, iteration...) followed by ``metrics`` to the run's
    metrics.json, log the one-line summary, and return the combined dict."""
    metrics = {**run, **metrics}
    write_json(metrics, run_dir / "metrics.json")
    log.info("%s", one_line_summary(metrics, run_dir))
    return metrics


def one_line_summary(metrics: dict, run_dir: Path) -> str:
    settings = metrics["eval"]
    protocol = "MS+flip" if is_multi_scale(settings["scales"], settings["flip"]) else "SS"
    parts = [f"{metrics['experiment']}: mIoU {metrics['mIoU']:.2f} ({protocol}, {settings['mode']}"]
    parts.append(f", T={settings['eval_stages']})")
    if "single_scale" in metrics:
        parts.append(f", {metrics['single_scale']['mIoU']:.2f} single scale")
    shown = run_dir.relative_to(Path.cwd()) if run_dir.is_relative_to(Path.cwd()) else run_dir
    parts.append(f"; aAcc {metrics['aAcc']:.2f}; results in {shown}")
    return "".join(parts)
