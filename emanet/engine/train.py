"""The training loop: SGD with poly lr over a fixed number of iterations, then evaluation."""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from emanet.data import build_dataset, warn_skipped
from emanet.data.transforms import train_transform
from emanet.engine.checkpoint import save_checkpoint, write_json
from emanet.engine.evaluate import evaluate_on_val, one_line_summary
from emanet.engine.optim import build_optimizer, build_poly_scheduler
from emanet.engine.runtime import build_train_loader, configure_runtime, forever
from emanet.errors import ConfigError
from emanet.models.segmentor import build_model

log = logging.getLogger(__name__)


def segmentation_loss(
    logits: torch.Tensor, labels: torch.Tensor, ignore_index: int, normalization: str
) -> torch.Tensor:
    """Per-pixel cross-entropy.

    ``valid`` averages over labelled pixels; ``all_pixels`` divides the sum by every pixel
    of the batch, ignored ones included, as the release does.
    """
    if normalization == "valid":
        return F.cross_entropy(logits, labels, ignore_index=ignore_index)
    if normalization == "all_pixels":
        return F.cross_entropy(logits, labels, ignore_index=ignore_index, reduction="sum") / labels.numel()
    raise ConfigError(f"loss.normalization must be 'valid' or 'all_pixels', got {normalization!r}")


def train_step(
    model: nn.Module,
    batch: dict,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    ignore_index: int,
    normalization: str,
) -> float:
    """One SGD step on one batch; returns the loss."""
    images = batch["image"].to(device, non_blocking=True)
    labels = batch["label"].to(device, non_blocking=True)
    logits = model(images)
    loss = segmentation_loss(logits, labels, ignore_index, normalization)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.item()


def checkpoint_state(model, optimizer, scheduler, iteration: int, cfg: DictConfig) -> dict:
    return {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "iteration": iteration,
        "config": OmegaConf.to_container(cfg, resolve=True),
    }


def train(cfg: DictConfig, run_dir: Path) -> dict:
    """Train the configured model, evaluate it on the val split, and fill ``run_dir``.

    Writes ``config.yaml``, ``checkpoints/last.pt``, TensorBoard events under
    ``tensorboard/`` and ``metrics.json``; returns the metrics.
    """
    device = configure_runtime(cfg)
    OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
    data_cfg = cfg.dataset
    train_set = build_dataset(
        data_cfg, data_cfg.train_split,
        train_transform(
            data_cfg.crop_size, data_cfg.train_scales, data_cfg.mean, data_cfg.std, data_cfg.ignore_index,
            data_cfg.scale_sampling,
        ),
    )
    if cfg.schedule.batch_size > len(train_set):
        raise ConfigError(
            f"schedule.batch_size={cfg.schedule.batch_size} exceeds the {len(train_set)} images "
            f"of split {data_cfg.train_split!r}"
        )
    loader = build_train_loader(
        train_set, cfg.schedule.batch_size, cfg.runtime.num_workers, cfg.seed, device.type == "cuda"
    )
    model = build_model(cfg.model, data_cfg.num_classes).to(device)
    optimizer = build_optimizer(model, cfg.optim)
    scheduler = build_poly_scheduler(
        optimizer, cfg.schedule.iterations, cfg.schedule.power, cfg.schedule.lr_update_every
    )
    checkpoint_dir = run_dir / "checkpoints"
    total = cfg.schedule.iterations
    log.info(
        "training %s for %d iterations, batch %d, on %s; run directory %s",
        cfg.name, total, cfg.schedule.batch_size, device, run_dir,
    )

    writer = SummaryWriter(str(run_dir / "tensorboard"))
    batches = forever(loader)
    model.train()
    start = time.perf_counter()
    window_start, window_images = start, 0
    progress = tqdm(range(total), desc="train", disable=not cfg.runtime.progress, dynamic_ncols=True)
    for iteration in progress:
        lr = optimizer.param_groups[0]["lr"]
        loss = train_step(
            model, next(batches), optimizer, device, data_cfg.ignore_index, cfg.loss.normalization
        )
        scheduler.step()
        done = iteration + 1
        window_images += cfg.schedule.batch_size
        if not math.isfinite(loss):
            raise FloatingPointError(f"loss became {loss} at iteration {done}")
        if done % cfg.schedule.log_every == 0 or done == total:
            now = time.perf_counter()
            writer.add_scalar("train/loss", loss, done)
            writer.add_scalar("train/lr", lr, done)
            writer.add_scalar("train/images_per_second", window_images / (now - window_start), done)
            window_start, window_images = now, 0
            progress.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.2e}")
        if done % cfg.schedule.checkpoint_every == 0 or done == total:
            save_checkpoint(checkpoint_state(model, optimizer, scheduler, done, cfg), checkpoint_dir / "last.pt")
        if cfg.schedule.eval_every and done % cfg.schedule.eval_every == 0 and done != total:
            evaluate_on_val(model, cfg, device, writer, done)
            model.train()
    progress.close()
    train_seconds = time.perf_counter() - start
    warn_skipped(train_set)

    metrics = evaluate_on_val(model, cfg, device, writer, total)
    writer.close()
    metrics = {
        "experiment": cfg.name,
        "checkpoint": str((checkpoint_dir / "last.pt").resolve()),
        "iteration": total,
        "train_seconds": round(train_seconds, 1),
        **metrics,
    }
    write_json(metrics, run_dir / "metrics.json")
    log.info("%s", one_line_summary(metrics, run_dir))
    return metrics
