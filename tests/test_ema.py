"""The EMA unit against a direct float64 computation of the paper's equations."""

import numpy as np
import pytest
import torch

from emanet.models.ema import EMAUnit, em_iterations

EPS = 1e-6


def reference_em(x: np.ndarray, mu: np.ndarray, stages: int, lam: float, normalize: bool = True):
    """E and M steps for one image, written from the equations. x: (C, N), mu: (C, K)."""
    for _ in range(stages):
        logits = lam * x.T @ mu  # (N, K)
        logits -= logits.max(axis=1, keepdims=True)
        z = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)  # softmax over K
        z_norm = z / (EPS + z.sum(axis=0, keepdims=True))  # normalise over positions
        mu = x @ z_norm  # (C, K)
        if normalize:
            mu = mu / (EPS + np.linalg.norm(mu, axis=0, keepdims=True))
    return z, mu


def reference_unit(unit: EMAUnit, x: torch.Tensor, stages: int):
    """Whole unit in eval mode: conv_in -> EM -> ReLU(mu z^T) -> conv_out -> BN -> +x -> ReLU."""
    w_in = unit.conv_in.weight.detach().double().numpy()[:, :, 0, 0]
    b_in = unit.conv_in.bias.detach().double().numpy()
    w_out = unit.conv_out[0].weight.detach().double().numpy()[:, :, 0, 0]
    bn = unit.conv_out[1]
    mean, var = bn.running_mean.double().numpy(), bn.running_var.double().numpy()
    gamma, beta = bn.weight.detach().double().numpy(), bn.bias.detach().double().numpy()
    b, c, h, w = x.shape
    outputs, bases = [], []
    for image in x.double().numpy():
        flat = image.reshape(c, h * w)
        features = w_in @ flat + b_in[:, None]
        z, mu = reference_em(features, unit.mu[0].double().numpy(), stages, unit.lambda_)
        recon = np.maximum(mu @ z.T, 0)  # (C, N)
        y = w_out @ recon
        y = (y - mean[:, None]) / np.sqrt(var[:, None] + bn.eps) * gamma[:, None] + beta[:, None]
        outputs.append(np.maximum(y + flat, 0).reshape(c, h, w))
        bases.append(mu)
    return np.stack(outputs), np.stack(bases)


def make_unit(channels=8, bases=5, train_stages=3, eval_stages=3, lam=1.0, seed=0) -> EMAUnit:
    torch.manual_seed(seed)
    unit = EMAUnit(channels, bases, train_stages, eval_stages, momentum=0.9, lambda_=lam)
    bn = unit.conv_out[1]
    with torch.no_grad():  # non-trivial BN statistics so the reference checks them too
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.2, 0.2)
    return unit.double()


def test_initial_bases_are_unit_norm_over_channels():
    unit = EMAUnit(16, 7)
    assert unit.mu.shape == (1, 16, 7)
    torch.testing.assert_close(unit.mu.norm(dim=1), torch.ones(1, 7), atol=1e-5, rtol=0)


@pytest.mark.parametrize("stages,lam", [(1, 1.0), (3, 1.0), (5, 0.5)])
def test_eval_forward_matches_reference(stages, lam):
    unit = make_unit(train_stages=stages, eval_stages=stages, lam=lam).eval()
    x = torch.randn(2, 8, 4, 5, dtype=torch.float64)
    expected, _ = reference_unit(unit, x, stages)
    torch.testing.assert_close(unit(x), torch.from_numpy(expected), rtol=1e-9, atol=1e-9)


def test_eval_leaves_bases_unchanged():
    unit = make_unit().eval()
    before = unit.mu.clone()
    unit(torch.randn(3, 8, 6, 6, dtype=torch.float64))
    assert torch.equal(unit.mu, before)


@pytest.mark.parametrize("momentum", [0.9, 0.5])
def test_training_updates_bases_by_moving_average_of_batch_mean(momentum):
    unit = make_unit(train_stages=2, eval_stages=2).train()
    unit.momentum = momentum
    x = torch.randn(3, 8, 4, 4, dtype=torch.float64)
    mu0 = unit.mu[0].clone().numpy()
    w_in = unit.conv_in.weight.detach().numpy()[:, :, 0, 0]
    b_in = unit.conv_in.bias.detach().numpy()
    final_bases = [
        reference_em(w_in @ image.reshape(8, 16) + b_in[:, None], mu0, 2, 1.0)[1] for image in x.numpy()
    ]
    unit(x)
    expected = momentum * mu0 + (1 - momentum) * np.mean(final_bases, axis=0)
    torch.testing.assert_close(unit.mu[0], torch.from_numpy(expected), rtol=1e-9, atol=1e-9)


def test_eval_stages_can_differ_from_train_stages():
    unit = make_unit(train_stages=1, eval_stages=4).eval()
    x = torch.randn(1, 8, 3, 3, dtype=torch.float64)
    expected_t4, _ = reference_unit(unit, x, 4)
    expected_t1, _ = reference_unit(unit, x, 1)
    out = unit(x)
    torch.testing.assert_close(out, torch.from_numpy(expected_t4), rtol=1e-9, atol=1e-9)
    assert not torch.allclose(out, torch.from_numpy(expected_t1))
    assert unit.stages == 4 and unit.train().stages == 1


def test_without_base_normalisation_the_bases_are_plain_weighted_means():
    x = np.random.default_rng(0).normal(size=(4, 10))
    mu = np.random.default_rng(1).normal(size=(4, 3))
    z, bases = reference_em(x, mu, 1, 1.0, normalize=False)
    z_t, mu_t = em_iterations(
        torch.from_numpy(x)[None], torch.from_numpy(mu)[None], 1, normalize_bases=False
    )
    torch.testing.assert_close(mu_t[0], torch.from_numpy(bases))
    torch.testing.assert_close(z_t[0], torch.from_numpy(z))


def test_gradient_flows_through_conv_out_but_not_through_the_iterations():
    unit = make_unit().train()
    x = torch.randn(2, 8, 4, 4, dtype=torch.float64, requires_grad=True)
    unit(x).sum().backward()
    assert unit.conv_out[0].weight.grad is not None and unit.conv_out[0].weight.grad.abs().sum() > 0
    # As in the release: Z and mu come from the no-gradient EM loop.
    assert unit.conv_in.weight.grad is None
    assert x.grad is not None  # through the residual connection


def test_em_runs_in_float32_under_bfloat16_autocast(monkeypatch):
    import emanet.models.ema as ema

    seen = []
    original = ema.em_iterations

    def recording_em(x, mu, *args, **kwargs):
        seen.append((x.dtype, mu.dtype, torch.is_autocast_enabled("cpu")))
        return original(x, mu, *args, **kwargs)

    monkeypatch.setattr(ema, "em_iterations", recording_em)
    unit = make_unit().float().eval()
    conv_dtypes = []
    unit.conv_in.register_forward_hook(lambda module, args, out: conv_dtypes.append(out.dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        unit(torch.randn(2, 8, 5, 5))
    assert conv_dtypes == [torch.bfloat16]  # the convs around the unit do run in bf16 ...
    assert seen == [(torch.float32, torch.float32, False)]  # ... the EM iterations do not


def test_without_maintenance_bases_are_redrawn_every_pass_and_never_stored():
    torch.manual_seed(0)
    unit = EMAUnit(8, 5, maintenance="none").train()
    stored = unit.mu.clone()
    x = torch.randn(2, 8, 4, 4)
    torch.manual_seed(1)
    first = unit(x)
    torch.manual_seed(1)
    assert torch.equal(unit(x), first)  # same draw, same output
    second = unit(x)
    assert not torch.allclose(first, second)  # a new draw each pass
    assert torch.equal(unit.mu, stored)


def test_unknown_maintenance_is_refused():
    with pytest.raises(ValueError, match="model.ema.maintenance"):
        EMAUnit(8, 5, maintenance="ema")


def out_of_place_unit(unit: EMAUnit, x: torch.Tensor) -> torch.Tensor:
    """The unit's training forward written without in-place operations or layout choices."""
    b, c, h, w = x.shape
    with torch.no_grad():
        features = unit.conv_in(x).reshape(b, c, h * w)
        z, mu = em_iterations(features, unit.mu.expand(b, -1, -1), unit.stages, unit.lambda_)
        reconstruction = torch.bmm(mu, z.transpose(1, 2)).reshape(b, c, h, w)
    return torch.relu(unit.conv_out(torch.relu(reconstruction)) + x)


@pytest.mark.parametrize("channels_last", [False, True])
def test_training_gradients_match_an_out_of_place_computation(channels_last):
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(2, 8, 4, 5, dtype=torch.float64).contiguous(memory_format=memory_format)
    weights = torch.randn(2, 8, 4, 5, dtype=torch.float64)
    results = []
    for forward in (out_of_place_unit, lambda unit, inputs: unit(inputs)):
        unit = make_unit().to(memory_format=memory_format).train()
        inputs = x.clone().requires_grad_()
        out = forward(unit, inputs)
        (out * weights).sum().backward()
        conv, bn = unit.conv_out
        results.append((out.detach(), inputs.grad, conv.weight.grad, bn.weight.grad, bn.bias.grad))
    for expected, actual in zip(*results, strict=True):
        torch.testing.assert_close(actual, expected, rtol=1e-10, atol=1e-12)


def test_channels_last_input_gives_the_same_map_laid_out_channels_last():
    unit = make_unit().eval()
    x = torch.randn(2, 8, 4, 5, dtype=torch.float64)
    expected, _ = reference_unit(unit, x, 3)
    out = unit.to(memory_format=torch.channels_last)(x.contiguous(memory_format=torch.channels_last))
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, torch.from_numpy(expected), rtol=1e-9, atol=1e-9)


def test_channels_last_under_bfloat16_autocast_stays_channels_last_and_close_to_float32():
    unit = make_unit(channels=16).float().eval().to(memory_format=torch.channels_last)
    x = torch.randn(2, 16, 6, 7).contiguous(memory_format=torch.channels_last)
    expected = unit(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = unit(x)
    assert out.dtype == torch.bfloat16 and out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out.float(), expected, rtol=0.05, atol=0.05)


def test_the_configured_ema_settings_reach_the_unit():
    from emanet.cli import compose_config
    from emanet.models.segmentor import build_model

    overrides = ["model.ema.momentum=0.5", "model.ema.num_bases=7", "model.ema.train_stages=2",
                 "model.ema.eval_stages=4", "model.ema.lambda_=0.5", "model.ema.normalize_bases=false"]
    unit = build_model(compose_config("train", overrides).model, 5).head.ema
    assert (unit.momentum, unit.mu.shape[2], unit.train_stages, unit.eval_stages, unit.lambda_) == (0.5, 7, 2, 4, 0.5)
    assert unit.normalize_bases is False
