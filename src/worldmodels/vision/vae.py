"""V: the convolutional VAE of World Models (Ha & Schmidhuber, 2018)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn


class ConvVAE(nn.Module):
    """ConvVAE for 64x64 RGB frames; 4,348,547 parameters at z_size=32."""

    def __init__(self, z_size: int = 32) -> None:
        super().__init__()
        self.z_size = z_size
        # 64 -> 31 -> 14 -> 6 -> 2 (kernel 4, stride 2, no padding): 2x2x256 = 1024.
        self.encoder = nn.Sequential(
            nn.Conv2d(3, 32, 4, stride=2),
            nn.ReLU(),
            nn.Conv2d(32, 64, 4, stride=2),
            nn.ReLU(),
            nn.Conv2d(64, 128, 4, stride=2),
            nn.ReLU(),
            nn.Conv2d(128, 256, 4, stride=2),
            nn.ReLU(),
            nn.Flatten(),
        )
        self.fc_mu = nn.Linear(1024, z_size)
        self.fc_logvar = nn.Linear(1024, z_size)
        self.fc_decode = nn.Linear(z_size, 1024)
        # 1 -> 5 -> 13 -> 30 -> 64.
        self.decoder = nn.Sequential(
            nn.ConvTranspose2d(1024, 128, 5, stride=2),
            nn.ReLU(),
            nn.ConvTranspose2d(128, 64, 5, stride=2),
            nn.ReLU(),
            nn.ConvTranspose2d(64, 32, 6, stride=2),
            nn.ReLU(),
            nn.ConvTranspose2d(32, 3, 6, stride=2),
            nn.Sigmoid(),
        )

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(N,3,64,64) in [0,1] -> (mu, logvar), each (N, z_size)."""
        h = self.encoder(x)
        return self.fc_mu(h), self.fc_logvar(h)

    def decode(self, z: Tensor) -> Tensor:
        """(N, z_size) -> (N,3,64,64) in [0,1]."""
        h = self.fc_decode(z).view(-1, 1024, 1, 1)
        return self.decoder(h)

    @staticmethod
    def reparameterize(mu: Tensor, logvar: Tensor) -> Tensor:
        """Sample z = mu + sigma * eps with eps ~ N(0, 1) from torch's RNG."""
        return mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x -> (reconstruction, mu, logvar), with z sampled by reparameterization."""
        mu, logvar = self.encode(x)
        return self.decode(self.reparameterize(mu, logvar)), mu, logvar


def frames_to_input(
    frames: Tensor | np.ndarray,
    device: torch.device | str | None = None,
    channels_last: bool = False,
) -> Tensor:
    """uint8 NHWC (N,64,64,3) or HWC frames -> float32 NCHW in [0,1] on `device`.

    ``channels_last``: keep the frames' own NHWC layout in memory (the tensor is NCHW all the
    same), for a V converted with ``to(memory_format=torch.channels_last)``.
    """
    if isinstance(frames, np.ndarray):
        frames = np.ascontiguousarray(frames)  # torch rejects negative strides (img[::-1])
    t = torch.as_tensor(frames)
    if t.dim() == 3:
        t = t.unsqueeze(0)
    # permute, never .view: a view of channels-last data scrambles the image.
    t = t.to(device=device).permute(0, 3, 1, 2)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    return t.to(torch.float32).div_(255.0).contiguous(memory_format=layout)


def output_to_frames(x: Tensor) -> np.ndarray:
    """float NCHW in [0,1] -> uint8 NHWC numpy array (rounded, clamped)."""
    x = x.detach().to("cpu", torch.float32).clamp(0.0, 1.0).mul(255.0).round()
    return x.to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


@dataclass
class VAELoss:
    """VAE loss terms, each a scalar tensor.

    `kl` is the batch mean of the per-image KL after the tolerance clamp (the term
    in `total`); `kl_raw` is the unclamped batch mean, for logging.
    """

    total: Tensor
    reconstruction: Tensor
    kl: Tensor
    kl_raw: Tensor


def vae_loss(
    recon: Tensor, target: Tensor, mu: Tensor, logvar: Tensor, kl_tolerance: float = 0.5
) -> VAELoss:
    """Per image: sum of squared error + max(KL, kl_tolerance * z_size); batch mean."""
    reconstruction = (recon - target).pow(2).flatten(1).sum(dim=1).mean()
    kl_per_image = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(dim=1)
    # The floor stops the KL gradient once an image's KL is below the tolerance.
    kl = kl_per_image.clamp(min=kl_tolerance * mu.shape[1]).mean()
    return VAELoss(
        total=reconstruction + kl,
        reconstruction=reconstruction,
        kl=kl,
        kl_raw=kl_per_image.detach().mean(),
    )
