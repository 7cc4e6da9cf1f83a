"""The training loop: SGD with poly lr over a fixed number of iterations, then evaluation."""

from __future__ import annotations

import logging
import math
import os
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from functools import partial
from pathlib import Path
from typing import NoReturn

import torch
import torch.distributed as dist
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from emanet.data import build_dataset, warn_skipped
from emanet.data.label_check import find_bad_labels, refuse_or_leave_out
from emanet.data.transforms import train_transform
from emanet.engine.amp import AmpSettings
from emanet.engine.checkpoint import (
    checkpoint_name,
    load_checkpoint,
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


LOSS_NORMALIZATIONS = ("valid", "all_pixels")


def check_loss_normalization(normalization: str) -> None:
    if normalization not in LOSS_NORMALIZATIONS:
        raise ConfigError(f"loss.normalization must be one of {LOSS_NORMALIZATIONS}, got {normalization!r}")


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
    check_loss_normalization(normalization)
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
SETTINGS_WITHOUT_EFFECT_ON_WEIGHTS = (
    "eval", "runtime.progress", "runtime.num_workers", "runtime.threads", "schedule.log_every",
    "schedule.checkpoint_every", "schedule.checkpoint_keep", "schedule.eval_every",
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


def resume(
    run_dir: Path, model, optimizer, scheduler, amp: AmpSettings, world: World, cfg: DictConfig
) -> tuple[int, Path | None, int, float]:
    """Load the newest intact checkpoint of ``run_dir``, if any; returns (iteration, path,
    the loader batches this process had drawn, the seconds trained so far). Rank 0 chooses it, setting aside newer ones
    that fail to read or to match their digest (see :func:`newest_intact_checkpoint`).

    Settings that differ from the checkpoint's (other than those that do not change the
    weights) are named in a warning: the run then continues with the new ones, and its
    weights are not those of an uninterrupted run of either config.
    """
    path, state = newest_intact_checkpoint(run_dir / "checkpoints") if world.is_main else (None, None)
    path = broadcast_from_main(path)
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


def check_schedule(cfg: DictConfig) -> None:
    """Refuse settings that would fail or mislead only later in a run."""
    schedule = cfg.schedule
    for key in ("iterations", "log_every", "checkpoint_every", "checkpoint_keep", "lr_update_every"):
        if schedule[key] < 1:
            raise ConfigError(f"schedule.{key} must be at least 1, got {schedule[key]}")
    if schedule.eval_every < 0:
        raise ConfigError(f"schedule.eval_every must be 0 (only at the end) or positive, got {schedule.eval_every}")
    check_loss_normalization(cfg.loss.normalization)


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
    check_schedule(cfg)
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


def train_in_locked_directory(cfg: DictConfig, run_dir: Path, world: World) -> dict:
    device = world.device
    amp = AmpSettings.from_config(cfg.runtime, device)
    eval_amp = AmpSettings.from_config(cfg.eval, device, key="eval")  # checked now, not after training
    schedule, data_cfg = cfg.schedule, cfg.dataset
    micro_batch = per_rank_batch(schedule.batch_size, world.size, schedule.accumulation_steps)
    # The dataset (missing data is the likeliest mistake, so it is reported first), then the
    # model and its pretrained weights: either can refuse the run before config.yaml is written.
    train_set = build_dataset(
        data_cfg, data_cfg.train_split,
        train_transform(
            data_cfg.crop_size, data_cfg.train_scales, mean=data_cfg.mean, std=data_cfg.std,
            ignore_index=data_cfg.ignore_index, scale_sampling=data_cfg.scale_sampling,
        ),
    )
    check_every_label([train_set, build_dataset(data_cfg, data_cfg.val_split)], cfg, world)
    if schedule.batch_size > len(train_set):
        raise ConfigError(
            f"schedule.batch_size={schedule.batch_size} exceeds the {len(train_set)} images "
            f"of split {data_cfg.train_split!r}"
        )
    model = prepare_batch_norm(build_model(cfg.model, data_cfg.num_classes), world).to(device)
    # Every process built the same initial weights from cfg.seed; from here on each draws its
    # own dropout masks (seed + rank), or all would drop the same channels of their images.
    torch.manual_seed(cfg.seed + world.rank)
    check_image_pooling_batch(model, micro_batch, cfg)
    if world.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
    sampler = SeededSampler(train_set, world, cfg.seed)

    if amp.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, cfg.optim)
    scheduler = build_poly_scheduler(optimizer, schedule.iterations, schedule.power, schedule.lr_update_every)
    checkpoint_dir = run_dir / "checkpoints"
    if world.is_main:  # it holds the lock: no other run is writing there
        remove_leftovers(checkpoint_dir)
    start, last_checkpoint, batches_drawn, seconds_before = resume(
        run_dir, model, optimizer, scheduler, amp, world, cfg
    )
    network = model
    if world.size > 1:
        network = wrap_ddp(model, device)
    if cfg.runtime.compile:
        network = torch.compile(network)

    total = schedule.iterations
    if start > total and world.is_main:
        log.warning(
            "the run's checkpoint %s is at iteration %d, beyond schedule.iterations=%d: nothing to train; "
            "evaluating the iteration-%d weights", last_checkpoint, start, total, start,
        )
    if world.is_main:
        log.info(
            "training %s for %d iterations, global batch %d (%d processes x %d x %d accumulation steps), on %s; "
            "run directory %s", cfg.name, total, schedule.batch_size, world.size, micro_batch,
            schedule.accumulation_steps, device, run_dir,
        )
    writer = SummaryWriter(str(run_dir / "tensorboard")) if world.is_main else None
    loader = build_train_loader(
        train_set, micro_batch, cfg.runtime.num_workers, sampler, cfg.seed, pin_memory=device.type == "cuda"
    )
    batches = EpochBatches(loader, sampler, batches_drawn)
    del loader  # batches owns it: closing them stops its workers
    model.train()
    began = time.perf_counter()
    train_seconds = seconds_before  # until a step is taken: a finished run re-run takes none
    # Logged per window of log_every steps: the mean loss, and images/s of the training steps
    # (periodic evaluations are not counted).
    window_start, window_images, window_losses = began, 0, []
    progress = tqdm(
        range(start, total), initial=start, total=total, desc="train",
        disable=not (cfg.runtime.progress and world.is_main), dynamic_ncols=True,
    )
    # Only the training steps stop at a signal: the final evaluation can be redone by resuming.
    with StopRequest() as stop_request:
        for iteration in progress:
            lr = optimizer.param_groups[0]["lr"]
            drawn_before = batches.consumed  # the loader position a checkpoint of `iteration` records
            micro_batches, bad_data = draw_micro_batches(batches, schedule.accumulation_steps)  # collective
            if bad_data:
                progress.close()
                if writer is not None:
                    writer.close()
                batches.close()
                state = partial(  # of the last completed iteration: drawing does not touch the global RNG
                    checkpoint_state, model, optimizer, scheduler, amp, iteration, cfg, drawn_before,
                    seconds_before + time.perf_counter() - began,
                )
                stop_for_bad_data(bad_data, iteration, state, checkpoint_dir, schedule.checkpoint_keep, world)
            loss = train_step(
                network, micro_batches, optimizer, device, data_cfg.ignore_index, cfg.loss.normalization, amp,
                iteration, last_checkpoint, cfg.model.aux.weight,
            )
            scheduler.step()
            done = iteration + 1
            train_seconds = seconds_before + time.perf_counter() - began  # over every invocation of the run
            window_images += schedule.batch_size
            window_losses.append(loss)
            if done % schedule.log_every == 0 or done == total:
                now = time.perf_counter()
                window_loss = sum(window_losses) / len(window_losses)
                if writer is not None:
                    writer.add_scalar("train/loss", window_loss, done)
                    writer.add_scalar("train/lr", lr, done)
                    writer.add_scalar("train/images_per_second", window_images / (now - window_start), done)
                    if device.type == "cuda":
                        writer.add_scalar("train/gpu_memory_gib", torch.cuda.max_memory_allocated(device) / 2**30, done)
                progress.set_postfix(loss=f"{window_loss:.3f}", lr=f"{lr:.2e}")
                window_start, window_images, window_losses = now, 0, []
            stop_signal = stop_request.agreed()  # collective: every process stops after the same step
            if done % schedule.checkpoint_every == 0 or done == total or stop_signal:
                state = checkpoint_state(  # collective
                    model, optimizer, scheduler, amp, done, cfg, batches.consumed, train_seconds
                )
                if world.is_main:
                    last_checkpoint = save_training_checkpoint(state, checkpoint_dir, schedule.checkpoint_keep)
            if stop_signal:
                progress.close()
                if writer is not None:
                    writer.close()
                shutdown_distributed()  # after rank 0 has written the checkpoint
                stopped_at = checkpoint_dir / checkpoint_name(done)
                message = (
                    f"stopped by {stop_signal} at iteration {done}; checkpoint {stopped_at}; "
                    "re-run the same command to resume"
                )
                if world.is_main:
                    log.warning("%s", message)
                stop_request.pass_on()
                raise TrainingStopped(message)
            if schedule.eval_every and done % schedule.eval_every == 0 and done != total:
                # Evaluation must not draw from the training RNG (its data loader seeds itself
                # from it): a run resumed after this iteration has not evaluated and would
                # continue with other dropout masks.
                evaluation_start = time.perf_counter()
                with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                    evaluate_on_val(model, cfg, device, eval_amp, writer, done, world)
                model.train()
                window_start += time.perf_counter() - evaluation_start
    progress.close()
    batches.close()
    warn_skipped(train_set)

    iteration = max(start, total)  # of the weights evaluated: a resumed run's checkpoint may be beyond total
    metrics = evaluate_on_val(model, cfg, device, eval_amp, writer, iteration, world, output_dir=run_dir)
    if world.is_main:
        writer.close()
        run = {
            "experiment": cfg.name,
            "checkpoint": str((checkpoint_dir / "last.pt").resolve()),
            "iteration": iteration,
            "train_seconds": round(train_seconds, 1),
        }
        metrics = write_run_metrics(run_dir, run, metrics)
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
