"""The trainer: exact resume, checkpoint rotation, divergence, batch splitting, and DDP on CPU."""

import copy
import json
import logging
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from helpers import TINY, assert_same_weights, compose_config
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import emanet.engine.train as train_module
from emanet.engine.amp import AmpSettings
from emanet.engine.distributed import per_rank_batch
from emanet.engine.optim import build_optimizer
from emanet.engine.train import train, train_step, wrap_ddp
from emanet.errors import CheckpointError, ConfigError, TrainingDivergedError
from emanet.models.segmentor import build_model


def test_checkpoints_rotate_and_last_links_the_newest(full_run):
    names = sorted(p.name for p in (full_run / "checkpoints").iterdir())
    assert names == ["iter_0000004.pt", "iter_0000004.pt.sha256", "iter_0000005.pt", "iter_0000005.pt.sha256",
                     "iter_0000006.pt", "iter_0000006.pt.sha256", "last.pt", "last.pt.sha256"]  # with digests
    assert os.path.samefile(full_run / "checkpoints" / "last.pt", full_run / "checkpoints" / "iter_0000006.pt")
    # The same digest, naming the file it sits beside (sha256sum -c checks a copy of the two).
    digest = (full_run / "checkpoints" / "iter_0000006.pt.sha256").read_text().split()[0]
    assert (full_run / "checkpoints" / "last.pt.sha256").read_text() == f"{digest}  last.pt\n"
    state = torch.load(full_run / "checkpoints" / "last.pt", weights_only=True)
    assert set(state) == {"model", "optimizer", "scheduler", "scaler", "iteration", "rng", "batches_drawn", "config",
                          "train_seconds"}
    assert state["iteration"] == 6 and len(state["rng"]) == 1
    assert state["batches_drawn"] == [6]  # one loader batch per step, none left out


@pytest.mark.slow
@pytest.mark.parametrize("interrupted_after", [4, 5])  # at an epoch boundary, and inside an epoch
def test_interrupted_run_resumes_bit_identically(full_run, data_root, tmp_path, caplog, interrupted_after):
    # What an interruption after iteration k leaves behind: its checkpoint.
    (tmp_path / "checkpoints").mkdir()
    source = tmp_path / "checkpoints" / f"iter_{interrupted_after:07d}.pt"
    shutil.copy(full_run / "checkpoints" / source.name, source)
    shutil.copy(full_run / "checkpoints" / f"{source.name}.sha256", tmp_path / "checkpoints")
    with caplog.at_level(logging.INFO, logger="emanet.engine.train"):
        train(compose_config([*TINY, f"data_root={data_root}"]), tmp_path)
    assert f"resuming from {source} (iteration {interrupted_after})" in caplog.text
    assert "other than it was trained with" not in caplog.text
    resumed = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)
    uninterrupted = torch.load(full_run / "checkpoints" / "last.pt", weights_only=True)
    assert resumed["iteration"] == 6
    for name, tensor in uninterrupted["model"].items():
        assert torch.equal(resumed["model"][name], tensor), name
    assert torch.equal(resumed["rng"][0]["torch"], uninterrupted["rng"][0]["torch"])


def interrupted_and_resumed(overrides: list[str], tmp_path: Path, interrupted_after: int = 4) -> tuple[dict, dict]:
    """Train ``overrides`` to the end, then again from its checkpoint at ``interrupted_after``
    in a fresh directory; the last checkpoints of (the uninterrupted, the resumed) run."""
    train(compose_config(overrides), tmp_path / "full")
    (tmp_path / "resumed" / "checkpoints").mkdir(parents=True)
    name = f"iter_{interrupted_after:07d}.pt"
    for copied in (name, f"{name}.sha256"):
        shutil.copy(tmp_path / "full" / "checkpoints" / copied, tmp_path / "resumed" / "checkpoints")
    train(compose_config(overrides), tmp_path / "resumed")
    return tuple(
        torch.load(tmp_path / run / "checkpoints" / "last.pt", weights_only=True) for run in ("full", "resumed")
    )


@pytest.mark.slow
def test_a_run_with_gradient_accumulation_resumes_bit_identically(data_root, tmp_path):
    # The data stream is consumed accumulation_steps micro-batches per step: a resumed run
    # must start at the right micro-batch, not replay or skip any.
    uninterrupted, resumed = interrupted_and_resumed(
        [*TINY, f"data_root={data_root}", "schedule.accumulation_steps=2"], tmp_path
    )
    assert_same_weights(resumed, uninterrupted)


@pytest.mark.slow
def test_a_run_that_leaves_out_bad_samples_resumes_bit_identically(data_root, tmp_path, monkeypatch):
    # Half the images have a damaged label that the check before training does not see (as
    # if damaged after it): with one image per step, the steps that meet one draw a second
    # batch, so the data position is not the iteration count.
    monkeypatch.setattr(train_module, "check_every_label", lambda *args: None)
    root = tmp_path / "damaged"
    shutil.copytree(data_root / "demo" / "VOC2012", root)
    for index in range(0, 10, 2):
        (root / "SegmentationClass" / f"demo_train_{index:05d}.png").write_bytes(b"not a PNG")
    overrides = [*TINY, f"data_root={data_root}", "schedule.batch_size=1", "dataset.skip_bad=true",
                 "dataset.name=damaged", f"dataset.root={root}", "dataset.class_names=[a,b,c,d,e]"]
    uninterrupted, resumed = interrupted_and_resumed(overrides, tmp_path)
    drawn = torch.load(tmp_path / "full" / "checkpoints" / "iter_0000004.pt", weights_only=True)["batches_drawn"]
    assert drawn[0] > 4
    assert resumed["batches_drawn"] == uninterrupted["batches_drawn"]
    assert_same_weights(resumed, uninterrupted)


@pytest.mark.slow
def test_resuming_with_other_settings_names_them(full_run, data_root, tmp_path, caplog):
    (tmp_path / "checkpoints").mkdir()
    shutil.copy(full_run / "checkpoints" / "iter_0000005.pt", tmp_path / "checkpoints")
    overrides = [*TINY, f"data_root={data_root}", "schedule.iterations=7", "model.ema.train_stages=2", "optim.lr=0.02",
                 "runtime.progress=true", "schedule.log_every=1", "eval=ms_flip"]  # the last three: no effect
    with caplog.at_level(logging.WARNING, logger="emanet.engine.train"):
        train(compose_config(overrides), tmp_path)
    warnings = [r.getMessage() for r in caplog.records if "other than it was trained with" in r.getMessage()]
    assert warnings == [
        f"resuming {tmp_path / 'checkpoints' / 'iter_0000005.pt'} with 4 setting(s) other than it was trained "
        "with: model.ema.eval_stages: 3 -> 2; model.ema.train_stages: 3 -> 2; optim.lr: 0.1 -> 0.02; "
        "schedule.iterations: 6 -> 7"
    ]
    # The run goes on with the new settings, the lr included (the checkpoint's optimizer
    # state brings its momentum buffers, not its lr).
    last = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)
    assert last["iteration"] == 7
    assert [group["initial_lr"] for group in last["optimizer"]["param_groups"]] == [0.02, 0.02, 0.04]


@pytest.mark.slow
def test_logged_loss_and_speed_are_window_means_without_the_evaluations(data_root, tmp_path, monkeypatch):
    # A fake clock: each training step takes 1 s, each evaluation 100 s.
    clock, losses = [0.0], []
    real_step, real_evaluation = train_module.train_step, train_module.evaluate_on_val

    def timed_step(*args, **kwargs):
        clock[0] += 1.0
        losses.append(real_step(*args, **kwargs))
        return losses[-1]

    def timed_evaluation(*args, **kwargs):
        clock[0] += 100.0
        return real_evaluation(*args, **kwargs)

    monkeypatch.setattr(train_module, "time", SimpleNamespace(perf_counter=lambda: clock[0]))
    monkeypatch.setattr(train_module, "train_step", timed_step)
    monkeypatch.setattr(train_module, "evaluate_on_val", timed_evaluation)
    overrides = [*TINY, f"data_root={data_root}", "schedule.log_every=4", "schedule.eval_every=2"]
    train(compose_config(overrides), tmp_path)
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    logged = {event.step: event.value for event in events.Scalars("train/loss")}
    assert logged == pytest.approx({4: sum(losses[:4]) / 4, 6: sum(losses[4:]) / 2}, rel=1e-6)
    speed = {event.step: event.value for event in events.Scalars("train/images_per_second")}
    assert speed == {4: 4.0, 6: 4.0}  # batch 4 per 1-s step; the evaluation at step 2 is left out
    assert len([e for e in events.Scalars("val/mIoU")]) == 3  # at 2, 4 and the end


@pytest.mark.slow
def test_evaluations_during_training_do_not_change_what_a_resumed_run_computes(data_root, tmp_path):
    # Iteration 4 is both checkpointed and evaluated: a run resumed from its checkpoint has
    # not evaluated, so evaluating must leave the training RNG where it was.
    overrides = [*TINY, f"data_root={data_root}", "schedule.eval_every=2"]
    uninterrupted, resumed = interrupted_and_resumed(overrides, tmp_path)
    assert_same_weights(resumed, uninterrupted)


def test_non_finite_loss_stops_before_the_update_and_names_the_last_checkpoint(data_root, tmp_path, monkeypatch):
    calls = {"n": 0}
    real_loss = train_module.segmentation_loss

    def loss_that_explodes(*args):
        calls["n"] += 1
        loss = real_loss(*args)
        return loss * float("nan") if calls["n"] == 3 else loss

    monkeypatch.setattr(train_module, "segmentation_loss", loss_that_explodes)
    with pytest.raises(TrainingDivergedError, match=r"loss became nan at iteration 3; .*iter_0000002.pt"):
        train(compose_config([*TINY, f"data_root={data_root}"]), tmp_path)
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir() if p.suffix == ".pt")
    assert names == ["iter_0000001.pt", "iter_0000002.pt", "last.pt"]


def test_a_non_finite_micro_batch_leaves_the_weights_and_momentum_untouched(monkeypatch):
    cfg = compose_config(["model.dropout=0"])
    torch.manual_seed(0)
    model = build_model(cfg.model, 5, load_pretrained=False).train()
    optimizer = build_optimizer(model, cfg.optim)
    batch = {"image": torch.randn(2, 3, 32, 32), "label": torch.randint(0, 5, (2, 32, 32))}
    train_step(model, [batch], optimizer, torch.device("cpu"), 255, "valid")  # momentum buffers exist now
    before = {name: tensor.clone() for name, tensor in model.named_parameters()}
    bases = model.head.ema.mu.clone()
    momentum = {id(p): optimizer.state[p]["momentum_buffer"].clone() for p in model.parameters() if p.requires_grad}
    real_loss = train_module.segmentation_loss
    losses = iter([1.0, float("inf")])  # the second of two micro-batches explodes
    monkeypatch.setattr(train_module, "segmentation_loss", lambda *args: real_loss(*args) * next(losses))
    with pytest.raises(TrainingDivergedError, match=r"loss became inf at iteration 8; stopped before updating"):
        train_step(model, [batch, batch], optimizer, torch.device("cpu"), 255, "valid", iteration=7)
    for name, tensor in model.named_parameters():
        assert torch.equal(tensor, before[name]), name
    assert torch.equal(model.head.ema.mu, bases)  # (BN statistics move in forward, as in any step)
    for parameter in model.parameters():
        if parameter.requires_grad:
            assert torch.equal(optimizer.state[parameter]["momentum_buffer"], momentum[id(parameter)])


def test_the_auxiliary_loss_is_added_with_its_weight():
    cfg = compose_config(["model.dropout=0", "model.aux.weight=0.4"])
    torch.manual_seed(0)
    model = build_model(cfg.model, 5, load_pretrained=False).train()
    reference = copy.deepcopy(model)
    label = torch.randint(0, 5, (2, 32, 32))
    label[0, :10] = 255
    batch = {"image": torch.randn(2, 3, 32, 32), "label": label}
    loss = train_step(model, [batch], build_optimizer(model, cfg.optim), torch.device("cpu"), 255, "valid",
                      aux_weight=0.4)

    reference_optimizer = build_optimizer(reference, cfg.optim)
    logits, aux_logits = reference(batch["image"])
    expected = F.cross_entropy(logits, label, ignore_index=255) + 0.4 * F.cross_entropy(
        aux_logits, label, ignore_index=255
    )
    expected.backward()
    reference_optimizer.step()
    assert loss == pytest.approx(expected.item(), rel=1e-6)
    assert expected.item() > F.cross_entropy(logits, label, ignore_index=255).item() * 1.1  # the aux term counts
    for (name, parameter), expected_parameter in zip(model.named_parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(parameter, expected_parameter, msg=name)


@pytest.mark.slow
def test_image_pooling_with_one_image_per_micro_batch_is_refused_before_training(data_root, tmp_path):
    # BatchNorm of ASPP's pooled branch would see one value per channel and fail at step 1.
    accumulated = [*TINY, f"data_root={data_root}", "model=deeplabv3", "schedule.accumulation_steps=4"]
    with pytest.raises(ConfigError) as raised:
        train(compose_config(accumulated), tmp_path)
    assert str(raised.value) == (
        "model.head=deeplabv3 normalises image-pooled features, which needs at least 2 images per micro-batch, "
        "but schedule.batch_size=4 with schedule.accumulation_steps=4 leaves 1 per process: "
        "lower schedule.accumulation_steps or raise schedule.batch_size"
    )
    assert not (tmp_path / "config.yaml").exists()
    model = build_model(compose_config(["model=deeplabv3"]).model, 3).train()
    with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
        model(torch.randn(1, 3, 33, 33))  # what the check spares the user
    model(torch.randn(2, 3, 33, 33))
    train_module.check_image_pooling_batch(model, 2, compose_config(["model=deeplabv3"]))
    train_module.check_image_pooling_batch(build_model(compose_config([]).model, 3), 1, compose_config([]))


@pytest.mark.parametrize("amp", [AmpSettings(torch.bfloat16, channels_last=True),
                                 AmpSettings(torch.float16, scaler=torch.amp.GradScaler("cpu"))])
def test_mixed_precision_step_is_close_to_the_float32_step(amp):
    cfg = compose_config(["model.dropout=0"])
    torch.manual_seed(0)
    batch = [{"image": torch.randn(2, 3, 32, 32), "label": torch.randint(0, 5, (2, 32, 32))}]
    results = []
    for settings in (AmpSettings(), amp):
        torch.manual_seed(1)
        model = build_model(cfg.model, 5)
        if settings.channels_last:
            model = model.to(memory_format=torch.channels_last)
        before = {name: p.detach().clone() for name, p in model.named_parameters()}
        optimizer = build_optimizer(model, cfg.optim)
        loss = train_step(model, batch, optimizer, torch.device("cpu"), 255, "valid", settings)
        update = {name: p.detach() - before[name] for name, p in model.named_parameters()}
        results.append((loss, update))
    (loss32, update32), (loss_mixed, update_mixed) = results
    assert loss_mixed == pytest.approx(loss32, rel=2e-2)
    classifier = "head.classifier.weight"
    assert update32[classifier].abs().max() > 0
    cosine = F.cosine_similarity(update32[classifier].flatten(), update_mixed[classifier].flatten(), dim=0)
    assert cosine > 0.99
    # The same size too: an fp16 update that skipped the scaler's unscaling would be 2^16 times larger.
    assert update_mixed[classifier].norm() / update32[classifier].norm() == pytest.approx(1.0, rel=0.05)


@pytest.mark.parametrize("normalization", ["valid", "all_pixels"])
def test_gradient_accumulation_gives_the_same_step_as_the_whole_batch(normalization):
    cfg = compose_config(["model.dropout=0"])
    torch.manual_seed(0)
    images, labels = torch.randn(4, 3, 32, 32), torch.randint(0, 5, (4, 32, 32))
    labels[0, :24] = 255  # the micro-batches hold different numbers of labelled pixels
    results = []
    for split in (1, 2):
        torch.manual_seed(1)
        model = build_model(cfg.model, 5)
        set_batch_norm_eval(model)
        initial_bases = model.head.ema.mu.clone()
        optimizer = build_optimizer(model, cfg.optim)
        chunks = [{"image": i, "label": lab} for i, lab in zip(images.chunk(split), labels.chunk(split), strict=True)]
        loss = train_step(model, chunks, optimizer, torch.device("cpu"), 255, normalization)
        results.append((loss, model.state_dict()))
    assert results[0][0] == pytest.approx(results[1][0], rel=1e-5)
    assert not torch.equal(results[0][1]["head.ema.mu"], initial_bases)  # the bases moved, once
    for name, tensor in results[0][1].items():
        torch.testing.assert_close(results[1][1][name], tensor, rtol=1e-4, atol=1e-6, msg=name)


def test_bases_move_once_per_step_towards_the_mean_of_all_micro_batches():
    from emanet.models.ema import EMAUnit, em_iterations, one_bases_update_per_step

    torch.manual_seed(0)
    unit = EMAUnit(8, num_bases=4).train()
    stored = unit.mu.clone()
    parts = [torch.randn(2, 8, 5, 5), torch.randn(2, 8, 5, 5)]
    with one_bases_update_per_step(unit):
        for part in parts:
            unit(part)
            assert torch.equal(unit.mu, stored)  # every micro-batch starts from the stored bases
    features = unit.conv_in(torch.cat(parts)).flatten(2)
    _, bases = em_iterations(features, stored.expand(4, -1, -1), stages=3)
    torch.testing.assert_close(unit.mu, 0.9 * stored + 0.1 * bases.mean(0, keepdim=True))
    with pytest.raises(RuntimeError), one_bases_update_per_step(unit):  # an interrupted step changes nothing
        unit(parts[0])
        raise RuntimeError
    torch.testing.assert_close(unit.mu, 0.9 * stored + 0.1 * bases.mean(0, keepdim=True))


def test_per_rank_batch_splits_the_global_batch():
    assert per_rank_batch(16, 4, 1) == 4
    assert per_rank_batch(16, 2, 4) == 2
    with pytest.raises(ConfigError, match=r"schedule.batch_size=16 \(the global batch\) must divide into 3 processes"):
        per_rank_batch(16, 3, 1)


def set_batch_norm_eval(model):
    model.train()
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.eval()


def ddp_worker(rank, world_size, rendezvous, images, labels, results, accumulation=1):
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world_size)
    try:
        cfg = compose_config(["model.dropout=0"])
        torch.manual_seed(0)  # the same initial weights and bases on every rank
        model = build_model(cfg.model, 5)
        set_batch_norm_eval(model)
        optimizer = build_optimizer(model, cfg.optim)
        network = wrap_ddp(model, torch.device("cpu"))
        share = images.shape[1] // world_size
        for step in range(3):
            part = slice(rank * share, (rank + 1) * share)
            chunks = zip(images[step, part].chunk(accumulation), labels[step, part].chunk(accumulation), strict=True)
            micro_batches = [{"image": image, "label": label} for image, label in chunks]
            train_step(network, micro_batches, optimizer, torch.device("cpu"), 255, "valid")
        torch.save(model.state_dict(), results / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_processes_stay_identical_and_match_one_process_over_the_global_batch(tmp_path):
    torch.manual_seed(0)
    images = torch.randn(3, 4, 3, 32, 32)  # 3 steps of a global batch of 4
    labels = torch.randint(0, 5, (3, 4, 32, 32))
    labels[:, 0, :20] = 255  # rank 0 holds fewer labelled pixels: the loss divisor must be global
    mp.spawn(ddp_worker, args=(2, tmp_path / "rendezvous", images, labels, tmp_path), nprocs=2, join=True)
    rank0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    for name, tensor in rank0.items():
        assert torch.equal(rank1[name], tensor), name  # bit-identical, bases included

    cfg = compose_config(["model.dropout=0"])
    torch.manual_seed(0)
    model = build_model(cfg.model, 5)
    set_batch_norm_eval(model)
    optimizer = build_optimizer(model, cfg.optim)
    for step in range(3):
        batch = {"image": images[step], "label": labels[step]}
        train_step(model, [batch], optimizer, torch.device("cpu"), 255, "valid")
    single = model.state_dict()
    assert not torch.equal(single["head.ema.mu"], build_model(cfg.model, 5).state_dict()["head.ema.mu"])
    for name, tensor in single.items():
        torch.testing.assert_close(rank0[name], tensor, rtol=1e-4, atol=1e-6, msg=name)


def eval_worker(rank, world_size, rendezvous, samples, results):
    from torch.utils.data import DataLoader

    from emanet.engine.distributed import ShardSampler, World
    from emanet.engine.evaluator import evaluate

    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world_size)
    try:
        torch.manual_seed(0)
        model = torch.nn.Conv2d(3, 4, 3, padding=1)
        loader = DataLoader(samples, batch_size=1, sampler=ShardSampler(len(samples), World(rank, world_size)))
        result = evaluate(model, loader, 4, [1.0, 1.5], True, torch.device("cpu"), progress=False)
        torch.save(
            {"confusion": result.confusion, "single": result.single_scale_confusion, "images": result.num_images},
            results / f"eval{rank}.pt",
        )
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_distributed_evaluation_counts_every_image_once(tmp_path):
    from emanet.engine.evaluator import evaluate

    torch.manual_seed(1)
    samples = [
        {"image": torch.randn(3, 9, 11), "label": torch.randint(0, 4, (9, 11)), "id": str(i)} for i in range(5)
    ]
    mp.spawn(eval_worker, args=(2, tmp_path / "rendezvous", samples, tmp_path), nprocs=2, join=True)
    torch.manual_seed(0)
    model = torch.nn.Conv2d(3, 4, 3, padding=1)
    loader = torch.utils.data.DataLoader(samples, batch_size=1)
    single = evaluate(model, loader, 4, [1.0, 1.5], True, torch.device("cpu"), progress=False)
    for rank in (0, 1):
        shared = torch.load(tmp_path / f"eval{rank}.pt", weights_only=True)
        assert shared["images"] == 5  # 3 + 2 images, none padded in twice
        assert torch.equal(shared["confusion"], single.confusion)
        assert torch.equal(shared["single"], single.single_scale_confusion)  # summed over processes too
    assert single.confusion.sum() == single.single_scale_confusion.sum() == 5 * 9 * 11


@pytest.mark.slow
def test_two_processes_with_gradient_accumulation_stay_identical(tmp_path):
    torch.manual_seed(0)
    images = torch.randn(3, 4, 3, 32, 32)
    labels = torch.randint(0, 5, (3, 4, 32, 32))
    mp.spawn(ddp_worker, args=(2, tmp_path / "rendezvous", images, labels, tmp_path, 2), nprocs=2, join=True)
    rank0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    initial = build_model(compose_config(["model.dropout=0"]).model, 5).state_dict()
    assert not torch.equal(rank0["head.classifier.weight"], initial["head.classifier.weight"])
    for name, tensor in rank0.items():
        assert torch.equal(rank1[name], tensor), name


@pytest.mark.slow
def test_compiled_ddp_all_reduces_only_on_the_last_micro_batch(tmp_path, monkeypatch):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        cfg = compose_config(["model.dropout=0"])
        torch.manual_seed(0)
        model = build_model(cfg.model, 5).train()
        optimizer = build_optimizer(model, cfg.optim)
        entered = []
        real_no_sync = torch.nn.parallel.DistributedDataParallel.no_sync
        monkeypatch.setattr(
            torch.nn.parallel.DistributedDataParallel, "no_sync",
            lambda self: entered.append(True) or real_no_sync(self),
        )
        network = torch.compile(wrap_ddp(model, torch.device("cpu")), backend="eager")
        batch = {"image": torch.randn(2, 3, 32, 32), "label": torch.randint(0, 5, (2, 32, 32))}
        bases = model.head.ema.mu.clone()
        train_step(network, [batch, batch, batch], optimizer, torch.device("cpu"), 255, "valid")
        assert len(entered) == 2
        assert not torch.equal(model.head.ema.mu, bases)  # the bases' update survives compilation
    finally:
        dist.destroy_process_group()


def test_atomic_writes_get_the_permissions_of_a_plain_write(tmp_path):
    from emanet.engine.checkpoint import save_checkpoint
    from emanet.io import write_json

    previous = os.umask(0o022)
    try:
        write_json({"mIoU": 1.0}, tmp_path / "metrics.json")
        save_checkpoint({"iteration": 1}, tmp_path / "iter.pt")
        (tmp_path / "plain.txt").write_text("x")
    finally:
        os.umask(previous)
    modes = {path.name: path.stat().st_mode & 0o777 for path in tmp_path.iterdir()}
    assert modes == {"metrics.json": 0o644, "iter.pt": 0o644, "iter.pt.sha256": 0o644, "plain.txt": 0o644}
    assert [path.name for path in tmp_path.iterdir() if path.name.startswith(".")] == []  # no temporary left


def test_an_interrupted_atomic_write_leaves_the_previous_file_and_no_temporary(tmp_path):
    from emanet.io import atomic_write

    path = tmp_path / "metrics.json"
    path.write_text("old")

    def interrupted(temp):
        Path(temp).write_text("half of the new")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, interrupted)
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_newest_checkpoint_is_the_highest_iteration_among_complete_files(tmp_path):
    from emanet.engine.checkpoint import load_checkpoint, newest_checkpoint

    for name in ("iter_0000004.pt", "iter_0000010.pt", "iter_0000009.pt", ".iter_0000011.pt.abc.tmp"):
        (tmp_path / name).write_bytes(b"")
    os.link(tmp_path / "iter_0000004.pt", tmp_path / "last.pt")
    assert newest_checkpoint(tmp_path) == tmp_path / "iter_0000010.pt"
    assert newest_checkpoint(tmp_path / "empty") is None
    (tmp_path / "iter_0000010.pt").write_bytes(b"half")  # a truncated file: one error naming it
    with pytest.raises(CheckpointError, match=rf"cannot read checkpoint {tmp_path / 'iter_0000010.pt'}: "):
        load_checkpoint(tmp_path / "iter_0000010.pt")


def train_worker(rank, world_size, rendezvous, overrides, run_dir):
    os.environ["WORLD_SIZE"] = str(world_size)  # as torchrun sets it
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world_size)
    try:
        train(compose_config(overrides), run_dir)  # leaves the process group when it ends
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


@pytest.mark.slow
def test_each_process_draws_its_own_dropout_masks(data_root, tmp_path):
    overrides = [*TINY, f"data_root={data_root}", "schedule.iterations=2"]
    mp.spawn(train_worker, args=(2, tmp_path / "rendezvous", overrides, tmp_path / "run"), nprocs=2, join=True)
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    assert len(state["rng"]) == 2
    assert not torch.equal(state["rng"][0]["torch"], state["rng"][1]["torch"])


def run_dir_worker(rank, world_size, rendezvous, results):
    from emanet.engine.distributed import shared_run_dir

    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world_size)
    try:
        own = Path(f"runs/demo/2026-01-01_00-00-0{rank}")  # the processes started in different seconds
        (results / f"dir{rank}.txt").write_text(str(shared_run_dir(own)))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_every_process_writes_into_rank_0s_run_directory(tmp_path):
    mp.spawn(run_dir_worker, args=(2, tmp_path / "rendezvous", tmp_path), nprocs=2, join=True)
    assert [(tmp_path / f"dir{rank}.txt").read_text() for rank in (0, 1)] == ["runs/demo/2026-01-01_00-00-00"] * 2


@pytest.mark.slow
def test_a_dataset_of_ones_own_needs_only_its_config(data_root, tmp_path):
    # The demo's files under another name: dataset.class_names replaces the built-in list.
    names = ["sky", "o", "ring-ish", "box", "plus"]
    overrides = [*TINY, f"data_root={data_root}", "schedule.iterations=2", "dataset.name=my_shapes",
                 f"dataset.root={data_root}/demo/VOC2012", f"dataset.class_names=[{','.join(names)}]"]
    train(compose_config(overrides), tmp_path)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert list(metrics["per_class_IoU"]) == names


@pytest.mark.slow
def test_the_training_loaders_workers_stop_when_training_ends(data_root, tmp_path):
    """Persistent workers are stopped at the end of training, not left to the garbage
    collector (which a multirun in one process met in its next job, waiting 5 s per worker)."""
    import gc
    import multiprocessing

    gc.collect()
    before = set(multiprocessing.active_children())
    gc.disable()
    try:
        train(compose_config([*TINY, "runtime.num_workers=2", f"data_root={data_root}"]), tmp_path)
        assert set(multiprocessing.active_children()) - before == set()
    finally:
        gc.enable()
