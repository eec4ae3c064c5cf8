"""Tests for the ConvVAE (V), its data path and its loss."""

import numpy as np
import pytest
import torch

from worldmodels.vision.vae import (
    ConvVAE,
    VAELoss,
    frames_to_input,
    output_to_frames,
    vae_loss,
)


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def known_image() -> np.ndarray:
    """64x64x3 uint8: distinct per-channel constants, an x gradient in R, a y gradient in B."""
    img = np.zeros((64, 64, 3), dtype=np.uint8)
    ys, xs = np.mgrid[0:64, 0:64]
    img[..., 0] = 10 + 3 * xs  # varies along x (columns)
    img[..., 1] = 200
    img[..., 2] = 50 + 2 * ys  # varies along y (rows)
    return img


def test_parameter_count_z32():
    assert n_params(ConvVAE(32)) == 4_348_547


def test_parameter_count_z64():
    # The paper's Doom V (z=64): only fc_mu, fc_logvar and the decoder's dense layer
    # depend on z, 3,074 parameters per latent dim.
    assert n_params(ConvVAE(64)) == 4_446_915


def test_shapes():
    torch.manual_seed(0)
    model = ConvVAE(z_size=32)
    x = torch.rand(5, 3, 64, 64)
    mu, logvar = model.encode(x)
    assert mu.shape == logvar.shape == (5, 32)
    assert model.decode(mu).shape == (5, 3, 64, 64)
    recon, mu2, logvar2 = model(x)
    assert recon.shape == (5, 3, 64, 64)
    assert mu2.shape == logvar2.shape == (5, 32)
    assert recon.min() >= 0 and recon.max() <= 1
    assert model.z_size == 32


def test_frames_to_input_is_a_permute_not_a_view():
    img = known_image()
    batch = np.stack([img, img[::-1]])
    assert frames_to_input(img[::-1]).shape == (1, 3, 64, 64)
    x = frames_to_input(batch)
    assert x.shape == (2, 3, 64, 64) and x.dtype == torch.float32
    for c in range(3):
        expected = torch.from_numpy(batch[..., c].astype(np.float32) / 255.0)
        assert torch.equal(x[:, c], expected)
    assert np.array_equal(output_to_frames(x), batch)


def test_frames_to_input_single_frame_and_tensor():
    img = known_image()
    x = frames_to_input(torch.from_numpy(img), device="cpu")
    assert x.shape == (1, 3, 64, 64)
    assert torch.equal(x[0, 0, 0, :], torch.from_numpy(img[0, :, 0] / 255.0).float())
    out = output_to_frames(x)
    assert out.dtype == np.uint8 and np.array_equal(out[0], img)


def test_output_to_frames_rounds_and_clamps():
    x = (
        torch.tensor([-0.5, 0.0, 0.5 / 255, 0.7 / 255, 1.0, 1.5])
        .view(1, 1, 1, 6)
        .expand(1, 3, 1, 6)
    )
    out = output_to_frames(x)
    assert out.shape == (1, 1, 6, 3)
    assert out[0, 0, :, 0].tolist() == [0, 0, 0, 1, 255, 255]


def numpy_loss(recon, target, mu, logvar, tol):
    rec = ((recon - target) ** 2).reshape(len(recon), -1).sum(axis=1).mean()
    kl_img = -0.5 * (1 + logvar - mu**2 - np.exp(logvar)).sum(axis=1)
    kl = np.maximum(kl_img, tol * mu.shape[1]).mean()
    return rec, kl, kl_img.mean()


@pytest.mark.parametrize("mu_scale, expect_clamped", [(0.05, True), (3.0, False)])
def test_loss_matches_numpy(mu_scale, expect_clamped):
    rng = np.random.default_rng(0)
    n, z = 4, 8
    recon = rng.random((n, 3, 64, 64))
    target = rng.random((n, 3, 64, 64))
    mu = mu_scale * rng.standard_normal((n, z))
    logvar = 0.1 * rng.standard_normal((n, z))
    rec, kl, kl_raw = numpy_loss(recon, target, mu, logvar, 0.5)
    kl_img = -0.5 * (1 + logvar - mu**2 - np.exp(logvar)).sum(axis=1)
    assert np.all(kl_img < 0.5 * z) if expect_clamped else np.all(kl_img > 0.5 * z)

    t = {k: torch.tensor(v) for k, v in dict(r=recon, t=target, m=mu, lv=logvar).items()}
    loss = vae_loss(t["r"], t["t"], t["m"], t["lv"], kl_tolerance=0.5)
    assert isinstance(loss, VAELoss)
    np.testing.assert_allclose(loss.reconstruction.item(), rec, rtol=1e-10)
    np.testing.assert_allclose(loss.kl.item(), kl, rtol=1e-10)
    np.testing.assert_allclose(loss.kl_raw.item(), kl_raw, rtol=1e-10)
    np.testing.assert_allclose(loss.total.item(), rec + kl, rtol=1e-10)
    if expect_clamped:
        assert loss.kl.item() == pytest.approx(0.5 * z)


def test_gradients_flow():
    torch.manual_seed(0)
    model = ConvVAE()
    x = torch.rand(3, 3, 64, 64)
    recon, mu, logvar = model(x)
    vae_loss(recon, x, mu, logvar, kl_tolerance=0.0).total.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
    assert any(p.grad.abs().sum() > 0 for p in model.encoder.parameters())


def test_reparameterize_uses_mu_at_tiny_variance():
    torch.manual_seed(0)
    mu = torch.randn(6, 32)
    z = ConvVAE.reparameterize(mu, torch.full_like(mu, -60.0))
    torch.testing.assert_close(z, mu, rtol=0, atol=1e-10)
    z_wide = ConvVAE.reparameterize(mu, torch.zeros_like(mu))
    assert not torch.allclose(z_wide, mu)
