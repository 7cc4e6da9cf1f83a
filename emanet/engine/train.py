"""The training loop: SGD with poly lr over a fixed number of iterations, then evaluation."""

from __future__ import annotations

import logging
import math
import os
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import NoReturn

import torch
import torch.distributed as dist
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from emanet.data import build_dataset, warn_skipped
from emanet.data.label_check import find_bad_labels, refuse_or_leave_out
from emanet.data.transforms import train_transform
from emanet.engine.amp import AmpSettings
from emanet.engine.checkpoint import (
    checkpoint_name,
    command_line_value,
    load_checkpoint,
    load_init_weights,
    load_model_weights,
    newest_intact_checkpoint,
    remove_leftovers,
    restore_rng_states,
    rng_states,
    save_training_checkpoint,
)
from emanet.engine.distributed import (
    SeededSampler,
    World,
    all_reduce_max,
    all_reduce_mean,
    broadcast_from_main,
    init_distributed,
    per_rank_batch,
    prepare_batch_norm,
    shared_run_dir,
    shutdown_distributed,
)
from emanet.engine.evaluate import evaluate_on_val, write_run_metrics
from emanet.engine.optim import (
    build_optimizer,
    build_poly_scheduler,
    configured_hyperparameters,
    restore_configured_hyperparameters,
)
from emanet.engine.run_directory import run_directory_lock
from emanet.engine.runtime import build_train_loader, configure_runtime
from emanet.errors import (
    ConfigError,
    DatasetError,
    TrainingDivergedError,
    TrainingStopped,
    one_line,
    out_of_memory_explained,
)
from emanet.models.baseline_heads import ASPP
from emanet.models.ema import one_bases_update_per_step
from emanet.models.segmentor import build_model

log = logging.getLogger(__name__)


def segmentation_loss(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int, divisor: torch.Tensor):
    """Per-pixel cross-entropy summed over the labelled pixels and divided by ``divisor``
    (see :func:`loss_divisor`)."""
    return F.cross_entropy(logits, labels, ignore_index=ignore_index, reduction="sum") / divisor


def training_loss(
    outputs: torch.Tensor | tuple[torch.Tensor, torch.Tensor], labels: torch.Tensor, ignore_index: int,
    divisor: torch.Tensor, aux_weight: float,
) -> torch.Tensor:
    """The loss of a training-mode forward pass: its logits, or ``(logits, aux_logits)`` from
    a model with an auxiliary head, whose loss is added ``aux_weight`` times."""
    if isinstance(outputs, torch.Tensor):
        return segmentation_loss(outputs, labels, ignore_index, divisor)
    logits, aux_logits = outputs
    return segmentation_loss(logits, labels, ignore_index, divisor) + aux_weight * segmentation_loss(
        aux_logits, labels, ignore_index, divisor
    )


def loss_divisor(labels: list[torch.Tensor], ignore_index: int, normalization: str) -> torch.Tensor:
    """What each micro-batch's summed loss is divided by, so that a step on micro-batches
    spread over processes equals a step on the mean loss of the whole global batch.

    ``valid`` counts labelled pixels, ``all_pixels`` every pixel (ignored ones count zero
    loss, as in the release), over all of this process's micro-batches, then averages the
    count over processes: accumulation sums the micro-batches' gradients and DDP averages
    the processes'. A global batch without a labelled pixel gives a zero loss.
    """
    if normalization == "valid":
        count = sum((label != ignore_index).sum() for label in labels)
    else:
        count = torch.tensor(float(sum(label.numel() for label in labels)), device=labels[0].device)
    return all_reduce_mean(count.float()).clamp(min=1.0)


def train_step(
    model: nn.Module,
    micro_batches: list[dict],
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    ignore_index: int,
    normalization: str,
    amp: AmpSettings | None = None,
    iteration: int = 0,
    last_checkpoint: Path | None = None,
    aux_weight: float = 0.0,
) -> float:
    """One SGD step on a global batch given as micro-batches (gradient accumulation).

    The weights and the EMA bases get the update of one step on the whole global batch.
    Returns the loss of the global batch. A non-finite loss stops training before the
    weights or the bases are touched. ``aux_weight`` is the weight of the auxiliary head's
    loss (``model.aux.weight``) for a model that has one.
    """
    amp = amp or AmpSettings()
    optimizer.zero_grad(set_to_none=True)
    labels = [batch["label"].to(device, non_blocking=True) for batch in micro_batches]
    divisor = loss_divisor(labels, ignore_index, normalization)
    # DDP all-reduces gradients on the last micro-batch only (torch.compile wraps it).
    ddp = isinstance(getattr(model, "_orig_mod", model), DistributedDataParallel)
    total = torch.zeros((), device=device)
    crops = micro_batches[0]["image"].shape  # what each pass holds the activations of
    memory = out_of_memory_explained(
        f"training at iteration {iteration + 1} (micro-batches of {crops[0]} crops of {crops[-2]}x{crops[-1]})",
        "raise schedule.accumulation_steps (the same batch in smaller passes) or lower schedule.batch_size / "
        "dataset.crop_size",
    )
    with one_bases_update_per_step(model), memory:
        for number, (batch, label) in enumerate(zip(micro_batches, labels, strict=True)):
            images = amp.memory_format(batch["image"].to(device, non_blocking=True))
            sync = not ddp or number == len(micro_batches) - 1
            with (nullcontext() if sync else model.no_sync()), amp.autocast(device):
                loss = training_loss(model(images), label, ignore_index, divisor, aux_weight)
            amp.scaler.scale(loss).backward()
            total += loss.detach()
        # Checked once, after the backward passes and before the update: the step's only
        # wait for the GPU, where a check between forward and backward would stall every pass.
        mean_loss = all_reduce_mean(total).item()
        if not math.isfinite(mean_loss):
            where = f"the last good checkpoint is {last_checkpoint}" if last_checkpoint else "no checkpoint yet"
            raise TrainingDivergedError(
                f"loss became {mean_loss} at iteration {iteration + 1}; stopped before updating the weights "
                f"({where}); lower optim.lr or try runtime.amp=off"
            )
        amp.scaler.step(optimizer)
        amp.scaler.update()
    return mean_loss


def wrap_ddp(model: nn.Module, device: torch.device) -> DistributedDataParallel:
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def checkpoint_state(
    model, optimizer, scheduler, amp: AmpSettings, iteration: int, cfg: DictConfig, batches_drawn: int,
    train_seconds: float,
) -> dict:
    """Everything a resumed run needs to continue bit-identically (the data order follows
    from the seed and each process's count of loader batches drawn), and the seconds spent
    training so far over every invocation of the run, for its metrics.json."""
    return {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": amp.scaler.state_dict(),
        "iteration": iteration,
        "rng": gather_from_every_process(rng_states()),
        "batches_drawn": gather_from_every_process(batches_drawn),
        "config": OmegaConf.to_container(cfg, resolve=True),
        "train_seconds": train_seconds,
    }


def gather_from_every_process(value: object) -> list:
    """Every process's ``value``, in rank order (RNG states and data positions differ)."""
    if dist.is_available() and dist.is_initialized():
        gathered = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, value)
        return gathered
    return [value]


# Settings that leave the trained weights as they are: a resumed run may change them quietly.
# model.init_from only starts a run: a resumed one continues from its checkpoint, whose weights
# came from the init_from it started with, so another value changes nothing from here on; the
# line saying it is not applied (:func:`start_from_init_weights`) names both.
SETTINGS_WITHOUT_EFFECT_ON_WEIGHTS = (
    "eval", "runtime.progress", "runtime.num_workers", "runtime.threads", "schedule.log_every",
    "schedule.checkpoint_every", "schedule.checkpoint_keep", "schedule.eval_every", "model.init_from",
)


def config_changes(saved: object, current: object, key: str = "") -> list[str]:
    """``key: saved -> current`` for each setting that differs between two resolved configs,
    leaving out :data:`SETTINGS_WITHOUT_EFFECT_ON_WEIGHTS`."""
    if key in SETTINGS_WITHOUT_EFFECT_ON_WEIGHTS:
        return []
    if isinstance(saved, dict) and isinstance(current, dict):
        return [
            change
            for name in sorted(set(saved) | set(current), key=str)
            for change in config_changes(saved.get(name), current.get(name), f"{key}.{name}" if key else str(name))
        ]
    return [] if saved == current else [f"{key}: {saved!r} -> {current!r}"]


def run_checkpoint(run_dir: Path, world: World) -> tuple[Path | None, dict | None]:
    """The newest intact checkpoint of ``run_dir`` and, on rank 0, its state ((None, None) if
    there is none). Rank 0 chooses it, setting aside newer ones that fail to read or to match
    their digest (see :func:`newest_intact_checkpoint`); the others learn its path."""
    path, state = newest_intact_checkpoint(run_dir / "checkpoints") if world.is_main else (None, None)
    return broadcast_from_main(path), state


def resume(
    checkpoint: tuple[Path | None, dict | None], model, optimizer, scheduler, amp: AmpSettings, world: World,
    cfg: DictConfig,
) -> tuple[int, Path | None, int, float]:
    """Load the run's ``checkpoint`` (:func:`run_checkpoint`), if any; returns (iteration, path,
    the loader batches this process had drawn, the seconds trained so far).

    Settings that differ from the checkpoint's (other than those that do not change the
    weights) are named in a warning: the run then continues with the new ones, and its
    weights are not those of an uninterrupted run of either config.
    """
    path, state = checkpoint
    if path is None:
        return 0, None, 0, 0.0
    if state is None:
        state = load_checkpoint(path)
    changes = config_changes(state["config"], OmegaConf.to_container(cfg, resolve=True)) if "config" in state else []
    if changes and world.is_main:
        log.warning(
            "resuming %s with %d setting(s) other than it was trained with: %s", path, len(changes),
            "; ".join(changes),
        )
    load_model_weights(model, state, path, cfg)
    configured = configured_hyperparameters(optimizer)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    restore_configured_hyperparameters(optimizer, scheduler, configured)
    amp.scaler.load_state_dict(state["scaler"])
    states = state["rng"]
    if len(states) != world.size:
        log.warning("checkpoint written by %d processes, resumed by %d: dropout draws differ", len(states), world.size)
    restore_rng_states(states[world.rank % len(states)])
    drawn = state.get("batches_drawn")  # absent from checkpoints of earlier versions
    if drawn is None or len(drawn) != world.size:
        drawn = [state["iteration"] * cfg.schedule.accumulation_steps] * world.size
    if world.is_main:
        log.info("resuming from %s (iteration %d)", path, state["iteration"])
    # Absent from checkpoints of earlier versions: the time of the invocations before is unknown.
    return state["iteration"], path, drawn[world.rank], state.get("train_seconds", 0.0)


def check_image_pooling_batch(model: nn.Module, micro_batch: int, cfg: DictConfig) -> None:
    """ASPP's image pooling normalises one value per channel and image: BatchNorm needs two
    images in each micro-batch, or SyncBatchNorm across processes, or it fails at the first step."""
    synced = any(isinstance(module, nn.SyncBatchNorm) for module in model.modules())
    if micro_batch == 1 and not synced and any(isinstance(module, ASPP) for module in model.modules()):
        schedule = cfg.schedule
        raise ConfigError(
            f"model.head={cfg.model.head} normalises image-pooled features, which needs at least 2 images "
            f"per micro-batch, but schedule.batch_size={schedule.batch_size} with "
            f"schedule.accumulation_steps={schedule.accumulation_steps} leaves 1 per process: "
            "lower schedule.accumulation_steps or raise schedule.batch_size"
        )


def check_every_label(datasets: list, cfg: DictConfig, world: World) -> None:
    """Check every label of ``datasets`` before the first step (:func:`find_bad_labels`): a
    bad one would stop training where it is drawn, or (val) after all of training. Rank 0
    checks, the other processes wait and act on its findings: stop, or leave the same
    samples out (``dataset.skip_bad``)."""
    for dataset in datasets:
        bad = find_bad_labels(dataset, cfg.runtime.num_workers, cfg.runtime.progress) if world.is_main else None
        refuse_or_leave_out(dataset, broadcast_from_main(bad), cfg.dataset.name)


def draw_micro_batches(batches: Iterator[dict], count: int) -> tuple[list[dict], str | None]:
    """The step's ``count`` micro-batches, or ([], the one-line message) of a DatasetError
    that a process met drawing them (a file that became unreadable, a label changed after
    the check). A collective under DDP: every process learns of it and stops after the
    same step, where the others would wait for the failed one in the step's collectives."""
    try:
        drawn, problem = [next(batches) for _ in range(count)], None
    except DatasetError as error:
        drawn, problem = [], one_line(error)
    if not all_reduce_max(int(problem is not None)):
        return drawn, None
    return [], next(message for message in gather_from_every_process(problem) if message)


def stop_for_bad_data(
    problem: str, iteration: int, state: Callable[[], dict], checkpoint_dir: Path, keep: int, world: World
) -> NoReturn:
    """Write the checkpoint of ``iteration``, the last completed one (``state()`` is the
    periodic checkpoint's collective: :func:`draw_micro_batches` brought every process
    here), then stop with one line naming the file and how to resume."""
    fix = "fix the file (or set dataset.skip_bad=true) and re-run the same command"
    if iteration == 0:
        message = f"{problem}; no iteration had completed, so no checkpoint was written; {fix}"
    else:
        snapshot = state()
        if world.is_main:
            save_training_checkpoint(snapshot, checkpoint_dir, keep)
        written = checkpoint_dir / checkpoint_name(iteration)
        message = f"{problem}; checkpoint {written} written at iteration {iteration}; {fix} to resume"
    shutdown_distributed()  # after rank 0 has written the checkpoint
    raise DatasetError(message)


def train(cfg: DictConfig, run_dir: Path) -> dict:
    """Train the configured model, evaluate it on the val split, and fill ``run_dir``.

    Runs as one process or as one of many (DDP) under torchrun, SLURM or submitit. Re-running with the same
    run directory resumes from its newest checkpoint. Rank 0 holds the run directory's lock
    and writes ``config.yaml``, ``checkpoints/``, TensorBoard events under ``tensorboard/``
    and ``metrics.json``; returns the metrics. SIGTERM, SIGINT, SIGUSR1 or SIGUSR2 stop every process
    after the same step with a checkpoint there (:class:`TrainingStopped`).
    """
    world = init_distributed(configure_runtime(cfg))
    run_dir = shared_run_dir(run_dir)
    with run_directory_lock(run_dir, world):
        return train_in_locked_directory(cfg, run_dir, world)


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2)


def stop_signals() -> tuple[signal.Signals, ...]:
    """STOP_SIGNALS, and the preemption signal submitit was told to use instead of its
    default SIGUSR2 (``SUBMITIT_PREEMPT_SIGNAL``), if any."""
    named = getattr(signal, "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2"), signal.SIGUSR2)
    return STOP_SIGNALS if named in STOP_SIGNALS else (*STOP_SIGNALS, named)


class StopRequest:
    """While entered, SIGTERM (SLURM or Kubernetes before a kill), SIGINT (Ctrl-C), SIGUSR1
    and SIGUSR2 (SLURM's ``--signal`` warning; submitit's preemption signal) only note that
    training should stop, so that the step under way finishes and is checkpointed; a second
    SIGINT interrupts at once. The previous handlers are restored on exit.

    A job manager's own handler of the signal (submitit's, which requeues the job) gets it
    once the checkpoint is written: :meth:`pass_on`.
    """

    def __init__(self) -> None:
        self.received = 0  # the signal's number; 0: none

    def __enter__(self) -> StopRequest:
        self.previous = {number: signal.signal(number, self.handle) for number in stop_signals()}
        return self

    def pass_on(self) -> None:
        """Call the handler that was installed before for the signal received, if a Python
        program installed it: submitit's requeues the job and exits. Python's own SIGINT
        handler (KeyboardInterrupt) is left out: training stopped, it did not crash."""
        previous = self.previous.get(self.received)
        if callable(previous) and previous is not signal.default_int_handler:
            previous(self.received, None)

    def __exit__(self, *exception: object) -> None:
        for number, handler in self.previous.items():
            # None: a handler installed outside Python, which cannot be put back; the default is the nearest.
            signal.signal(number, signal.SIG_DFL if handler is None else handler)

    def handle(self, number: int, frame: object) -> None:
        if number == signal.SIGINT and self.received:
            raise KeyboardInterrupt
        self.received = number

    def agreed(self) -> str | None:
        """The name of a stop signal any process received, on every process (a collective:
        all stop after the same step); None if none did."""
        number = all_reduce_max(self.received)
        return signal.Signals(number).name if number else None


def build_training_set(cfg: DictConfig, world: World) -> Dataset:
    """The training split with its augmentation, once every label of it and of the val split
    has passed :func:`check_every_label`; refuses a global batch larger than the split."""
    data_cfg, batch_size = cfg.dataset, cfg.schedule.batch_size
    train_set = build_dataset(
        data_cfg, data_cfg.train_split,
        train_transform(
            data_cfg.crop_size, data_cfg.train_scales, mean=data_cfg.mean, std=data_cfg.std,
            ignore_index=data_cfg.ignore_index, scale_sampling=data_cfg.scale_sampling,
        ),
    )
    check_every_label([train_set, build_dataset(data_cfg, data_cfg.val_split)], cfg, world)
    if batch_size > len(train_set):
        raise ConfigError(
            f"schedule.batch_size={batch_size} exceeds the {len(train_set)} images "
            f"of split {data_cfg.train_split!r}"
        )
    return train_set


def build_training_model(cfg: DictConfig, micro_batch: int, world: World) -> nn.Module:
    """The configured model with its pretrained weights on this process's device, and the
    global RNG seeded for this process's dropout masks.

    With ``model.init_from`` the ImageNet weights are not loaded: the fine-tuned checkpoint's
    replace them, or a resumed run's (torchvision's would be downloaded for nothing)."""
    pretrained = cfg.model.get("init_from") is None
    model = build_model(cfg.model, cfg.dataset.num_classes, load_pretrained=pretrained)
    model = prepare_batch_norm(model, world).to(world.device)
    # Every process built the same initial weights from cfg.seed; from here on each draws its
    # own dropout masks (seed + rank), or all would drop the same channels of their images.
    torch.manual_seed(cfg.seed + world.rank)
    check_image_pooling_batch(model, micro_batch, cfg)
    return model


def save_resolved_config(cfg: DictConfig, run_dir: Path, world: World) -> None:
    """Rank 0 writes ``run_dir/config.yaml``, the config with its interpolations resolved."""
    if world.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)


@dataclass
class TrainingState:
    """What the training loop steps and checkpoints. ``network`` is ``model`` as the steps
    call it (DDP-wrapped, compiled); ``start``, ``last_checkpoint``, ``batches_drawn`` and
    ``seconds_before`` are those of the checkpoint resumed from (0, None, 0, 0.0 if none)."""

    model: nn.Module
    network: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    amp: AmpSettings
    start: int
    last_checkpoint: Path | None
    batches_drawn: int
    seconds_before: float

    def checkpoint_state(self, iteration: int, cfg: DictConfig, batches_drawn: int, train_seconds: float) -> dict:
        """:func:`checkpoint_state` of these (a collective)."""
        return checkpoint_state(
            self.model, self.optimizer, self.scheduler, self.amp, iteration, cfg, batches_drawn, train_seconds
        )

    def save_checkpoint(
        self, iteration: int, cfg: DictConfig, batches_drawn: int, train_seconds: float, checkpoint_dir: Path,
        world: World,
    ) -> None:
        """Checkpoint ``iteration`` (a collective; rank 0 writes the file and notes it as the last)."""
        state = self.checkpoint_state(iteration, cfg, batches_drawn, train_seconds)
        if world.is_main:
            self.last_checkpoint = save_training_checkpoint(state, checkpoint_dir, cfg.schedule.checkpoint_keep)

    def seconds_since(self, began: float) -> float:
        """The seconds trained over every invocation of the run, this one's having begun at ``began``."""
        return self.seconds_before + time.perf_counter() - began


def prepare_model_and_optimizer(
    model: nn.Module, amp: AmpSettings, cfg: DictConfig, run_dir: Path, world: World
) -> TrainingState:
    """The optimizer and poly scheduler of ``model``, all three resumed from the newest intact
    checkpoint of ``run_dir`` if it has one (see :func:`resume`), and the network the steps call.
    A run without one starts from ``model.init_from``'s weights, if set, with a fresh optimizer."""
    if world.is_main:  # it holds the lock: no other run is writing there
        remove_leftovers(run_dir / "checkpoints")
    checkpoint = run_checkpoint(run_dir, world)
    start_from_init_weights(model, cfg, checkpoint, world)
    if amp.channels_last:
        model = model.to(memory_format=torch.channels_last)
    schedule = cfg.schedule
    optimizer = build_optimizer(model, cfg.optim)
    scheduler = build_poly_scheduler(optimizer, schedule.iterations, schedule.power, schedule.lr_update_every)
    start, last_checkpoint, batches_drawn, seconds_before = resume(
        checkpoint, model, optimizer, scheduler, amp, world, cfg
    )
    network = model
    if world.size > 1:
        network = wrap_ddp(model, world.device)
    if cfg.runtime.compile:
        network = torch.compile(network)
    return TrainingState(
        model, network, optimizer, scheduler, amp, start, last_checkpoint, batches_drawn, seconds_before
    )


def start_from_init_weights(
    model: nn.Module, cfg: DictConfig, checkpoint: tuple[Path | None, dict | None], world: World
) -> None:
    """Load ``model.init_from``'s weights into ``model`` (:func:`load_init_weights`; every
    process, rank 0 logs), unless the run has a ``checkpoint`` (:func:`run_checkpoint`): a
    fine-tuning run restarted after a kill resumes from it, bit-identically, as any run does."""
    init_from = cfg.model.get("init_from")
    if init_from is None:
        return
    path, state = checkpoint
    if path is not None:
        if world.is_main:
            log.info("%s", init_from_not_applied(init_from, path, state))
        return
    load_init_weights(model, init_from, cfg, announce=world.is_main)
    if world.is_main and cfg.model.backbone.pretrained:
        log.info(
            "model.backbone.pretrained=%s not loaded: model.init_from gives the backbone its weights",
            cfg.model.backbone.pretrained,
        )


def init_from_not_applied(init_from: str, path: Path, state: dict | None) -> str:
    """The line of a resumed run with ``model.init_from`` set; it names the init_from the run
    started with when that was another, which is where its weights came from."""
    started = ((state or {}).get("config") or {}).get("model", {}).get("init_from", init_from)
    line = f"model.init_from={init_from} not applied: resuming from the run's checkpoint {path}"
    if started != init_from:
        line += f" (the run started with model.init_from={command_line_value(started)})"
    return line


def log_training_plan(cfg: DictConfig, training: TrainingState, micro_batch: int, run_dir: Path, world: World) -> None:
    """Rank 0 logs what is about to be trained, warning if the checkpoint resumed from is past the end."""
    if not world.is_main:
        return
    schedule, total, start = cfg.schedule, cfg.schedule.iterations, training.start
    if start > total:
        log.warning(
            "the run's checkpoint %s is at iteration %d, beyond schedule.iterations=%d: nothing to train; "
            "evaluating the iteration-%d weights", training.last_checkpoint, start, total, start,
        )
    log.info(
        "training %s for %d iterations, global batch %d (%d processes x %d x %d accumulation steps), on %s; "
        "run directory %s", cfg.name, total, schedule.batch_size, world.size, micro_batch,
        schedule.accumulation_steps, world.device, run_dir,
    )


def training_batches(
    train_set: Dataset, micro_batch: int, cfg: DictConfig, world: World, start_batch: int
) -> EpochBatches:
    """This process's micro-batches of ``train_set`` from loader batch ``start_batch`` on
    (see :class:`EpochBatches`, which owns the loader: closing it stops the loader's workers)."""
    sampler = SeededSampler(train_set, world, cfg.seed)
    loader = build_train_loader(
        train_set, micro_batch, cfg.runtime.num_workers, sampler, cfg.seed, pin_memory=world.device.type == "cuda"
    )
    return EpochBatches(loader, sampler, start_batch)


def training_progress(start: int, total: int, cfg: DictConfig, world: World) -> tqdm:
    """Iterations ``start`` to ``total``, with a progress bar on rank 0 if ``runtime.progress``."""
    return tqdm(
        range(start, total), initial=start, total=total, desc="train",
        disable=not (cfg.runtime.progress and world.is_main), dynamic_ncols=True,
    )


class LossWindow:
    """The training steps of a window of ``schedule.log_every`` steps (or up to the last): at
    its end, their mean loss, the lr and their images per second go to TensorBoard (rank 0's
    ``writer``) and the progress bar. Time spent evaluating in between is left out (:meth:`leave_out`)."""

    def __init__(
        self, writer: SummaryWriter | None, progress: tqdm, device: torch.device, schedule: DictConfig, start: float
    ) -> None:
        self.writer, self.progress, self.device = writer, progress, device
        self.batch_size, self.log_every, self.total = schedule.batch_size, schedule.log_every, schedule.iterations
        self.start, self.images, self.losses = start, 0, []

    def step(self, done: int, loss: float, lr: float) -> None:
        """Add the loss of the step that completed iteration ``done``; log the window if it ends there."""
        self.images += self.batch_size
        self.losses.append(loss)
        if done % self.log_every == 0 or done == self.total:
            self.log(done, lr)

    def log(self, step: int, lr: float) -> None:
        """Log the window ending at ``step``, and start the next."""
        now = time.perf_counter()
        window_loss = sum(self.losses) / len(self.losses)
        if self.writer is not None:
            self.writer.add_scalar("train/loss", window_loss, step)
            self.writer.add_scalar("train/lr", lr, step)
            self.writer.add_scalar("train/images_per_second", self.images / (now - self.start), step)
            if self.device.type == "cuda":
                self.writer.add_scalar(
                    "train/gpu_memory_gib", torch.cuda.max_memory_allocated(self.device) / 2**30, step
                )
        self.progress.set_postfix(loss=f"{window_loss:.3f}", lr=f"{lr:.2e}")
        self.start, self.images, self.losses = now, 0, []

    def leave_out(self, seconds: float) -> None:
        self.start += seconds


def close_logs(progress: tqdm, writer: SummaryWriter | None) -> None:
    """Close the progress bar and rank 0's TensorBoard writer before training stops early."""
    progress.close()
    if writer is not None:
        writer.close()


def stop_for_signal(
    signal_name: str, iteration: int, checkpoint_dir: Path, stop_request: StopRequest, progress: tqdm,
    writer: SummaryWriter | None, world: World,
) -> NoReturn:
    """Stop after ``iteration``, whose checkpoint rank 0 has written, with one line naming it
    and how to resume; then hand the signal to the handler it replaced (:meth:`StopRequest.pass_on`)."""
    close_logs(progress, writer)
    shutdown_distributed()  # after rank 0 has written the checkpoint
    stopped_at = checkpoint_dir / checkpoint_name(iteration)
    message = (
        f"stopped by {signal_name} at iteration {iteration}; checkpoint {stopped_at}; "
        "re-run the same command to resume"
    )
    if world.is_main:
        log.warning("%s", message)
    stop_request.pass_on()
    raise TrainingStopped(message)


def evaluate_during_training(
    model: nn.Module, cfg: DictConfig, amp: AmpSettings, writer: SummaryWriter | None, iteration: int, world: World
) -> float:
    """Evaluate on val at ``iteration`` and put ``model`` back in training mode; returns the
    seconds it took, which the images-per-second of the training steps leave out."""
    began = time.perf_counter()
    device = world.device
    # Evaluation must not draw from the training RNG (its data loader seeds itself from it):
    # a run resumed after this iteration has not evaluated and would continue with other
    # dropout masks.
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        evaluate_on_val(model, cfg, device, amp, writer, iteration, world)
    model.train()
    return time.perf_counter() - began


def final_evaluation(
    model: nn.Module, cfg: DictConfig, amp: AmpSettings, writer: SummaryWriter | None, iteration: int,
    train_seconds: float, run_dir: Path, world: World,
) -> dict:
    """Evaluate the weights of ``iteration`` on val; rank 0 closes ``writer`` and writes them
    with the run's record to metrics.json. Returns the metrics."""
    metrics = evaluate_on_val(model, cfg, world.device, amp, writer, iteration, world, output_dir=run_dir)
    if world.is_main:
        writer.close()
        run = {
            "experiment": cfg.name,
            "checkpoint": str((run_dir / "checkpoints" / "last.pt").resolve()),
            "iteration": iteration,
            "train_seconds": round(train_seconds, 1),
        }
        metrics = write_run_metrics(run_dir, run, metrics)
    return metrics


def train_in_locked_directory(cfg: DictConfig, run_dir: Path, world: World) -> dict:
    """:func:`train` in ``run_dir``, whose lock this process group holds."""
    device, schedule, checkpoint_dir = world.device, cfg.schedule, run_dir / "checkpoints"
    amp = AmpSettings.from_config(cfg.runtime, device)
    eval_amp = AmpSettings.from_config(cfg.eval, device)
    micro_batch = per_rank_batch(schedule.batch_size, world.size, schedule.accumulation_steps)
    # The dataset (missing data is the likeliest mistake, so it is reported first), then the
    # model and its pretrained weights: either can refuse the run before config.yaml is written.
    train_set = build_training_set(cfg, world)
    model = build_training_model(cfg, micro_batch, world)
    save_resolved_config(cfg, run_dir, world)
    training = prepare_model_and_optimizer(model, amp, cfg, run_dir, world)
    log_training_plan(cfg, training, micro_batch, run_dir, world)
    writer = SummaryWriter(str(run_dir / "tensorboard")) if world.is_main else None
    batches = training_batches(train_set, micro_batch, cfg, world, training.batches_drawn)
    training.model.train()
    began = time.perf_counter()
    train_seconds = training.seconds_before  # until a step is taken: a finished run re-run takes none
    start, total = training.start, schedule.iterations
    progress = training_progress(start, total, cfg, world)
    window = LossWindow(writer, progress, device, schedule, began)
    # Only the training steps stop at a signal: the final evaluation can be redone by resuming.
    with StopRequest() as stop_request:
        for iteration in progress:
            lr = training.optimizer.param_groups[0]["lr"]
            drawn_before = batches.consumed  # the loader position a checkpoint of `iteration` records
            micro_batches, bad_data = draw_micro_batches(batches, schedule.accumulation_steps)  # collective
            if bad_data:
                close_logs(progress, writer)
                batches.close()
                # Of the last completed iteration: drawing does not touch the global RNG.
                state = partial(training.checkpoint_state, iteration, cfg, drawn_before, training.seconds_since(began))
                stop_for_bad_data(bad_data, iteration, state, checkpoint_dir, schedule.checkpoint_keep, world)
            loss = train_step(
                training.network, micro_batches, training.optimizer, device, cfg.dataset.ignore_index,
                cfg.loss.normalization, amp, iteration, training.last_checkpoint, cfg.model.aux.weight,
            )
            training.scheduler.step()
            done = iteration + 1
            train_seconds = training.seconds_since(began)
            window.step(done, loss, lr)
            stop_signal = stop_request.agreed()  # collective: every process stops after the same step
            if done % schedule.checkpoint_every == 0 or done == total or stop_signal:  # a collective checkpoint
                training.save_checkpoint(done, cfg, batches.consumed, train_seconds, checkpoint_dir, world)
            if stop_signal:
                stop_for_signal(stop_signal, done, checkpoint_dir, stop_request, progress, writer, world)
            if schedule.eval_every and done % schedule.eval_every == 0 and done != total:
                window.leave_out(evaluate_during_training(training.model, cfg, eval_amp, writer, done, world))
    progress.close()
    batches.close()
    warn_skipped(train_set)
    # The weights evaluated are of max(start, total): a resumed run's checkpoint may be beyond total.
    metrics = final_evaluation(training.model, cfg, eval_amp, writer, max(start, total), train_seconds, run_dir, world)
    shutdown_distributed()
    return metrics


class EpochBatches:
    """Batches epoch after epoch (reshuffled each epoch), from loader batch ``start_batch`` on.

    A resumed run starts in the middle of an epoch: the sampler skips what was trained
    on, so the data order is the one of an uninterrupted run. A batch whose samples were
    all left out (``dataset.skip_bad``) is passed over, but counted in ``consumed`` (the
    loader batches drawn so far), which a checkpoint keeps for each process: a step that
    passed over one has drawn more than ``accumulation_steps`` batches.
    """

    def __init__(self, loader: DataLoader, sampler: SeededSampler, start_batch: int) -> None:
        self.loader, self.sampler = loader, sampler
        self.consumed = start_batch
        self._batches = self._each_batch()

    def _each_batch(self) -> Iterator[dict]:
        per_epoch = len(self.sampler.sampler) // self.loader.batch_size
        epoch, position = divmod(self.consumed, per_epoch)
        while True:
            self.sampler.set_epoch(epoch, skip=position * self.loader.batch_size)
            for batch in self.loader:
                self.consumed += 1
                if batch is not None:
                    yield batch
            epoch, position = epoch + 1, 0

    def __iter__(self) -> Iterator[dict]:
        return self

    def __next__(self) -> dict:
        return next(self._batches)

    def close(self) -> None:
        """Stop the loader's worker processes now. The batch generator refers back to this
        object, a cycle that only the garbage collector breaks: left to it, persistent
        workers outlive training, through the final evaluation and into the next job of a
        multirun in the same process, where their shutdown waits 5 s per worker."""
        self._batches.close()
        self.loader = None
