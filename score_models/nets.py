"""The architectures of the shipped networks (small enough to train on 2 CPU cores)."""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

__all__ = ["timestep_embedding", "TimeMLP", "DigitsUNet", "DigitsClassifier", "NUM_CLASSES", "NULL_CLASS"]

NUM_CLASSES = 10
NULL_CLASS = NUM_CLASSES  # the "no label" class used for classifier-free guidance


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) times, as in Ho et al. 2020 / Vaswani et al. 2017."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class TimeMLP(nn.Module):
    """eps-network for 2-D data: [x, emb(t * time_scale)] -> 3 hidden SiLU layers -> eps."""

    def __init__(self, dim: int = 2, hidden: int = 256, emb: int = 64, time_scale: float = 1000.0):
        super().__init__()
        self.emb, self.time_scale = emb, time_scale
        self.net = nn.Sequential(nn.Linear(dim + emb, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                                 nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([x, timestep_embedding(t * self.time_scale, self.emb).to(x.dtype)], dim=-1))


class _ResBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, emb: int, groups: int = 8):
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(groups, c_in), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb, c_out)
        self.norm2, self.conv2 = nn.GroupNorm(groups, c_out), nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        h = self.conv1(nn.functional.silu(self.norm1(x)))
        h = h + self.emb(e)[:, :, None, None]
        h = self.conv2(nn.functional.silu(self.norm2(h)))
        return self.skip(x) + h


class DigitsUNet(nn.Module):
    """A two-level UNet for 1x8x8 images with timestep and class conditioning.

    ``class_labels`` in 0..9, or NULL_CLASS (or None) for the unconditional model: the network is
    trained with label dropout, so one set of weights serves both (Ho & Salimans 2022).
    """

    def __init__(self, channels: int = 32, emb: int = 128, time_scale: float = 1.0):
        super().__init__()
        c, c2 = channels, 2 * channels
        self.emb_dim, self.time_scale = emb, time_scale
        self.time = nn.Sequential(nn.Linear(emb, emb), nn.SiLU(), nn.Linear(emb, emb))
        self.label = nn.Embedding(NUM_CLASSES + 1, emb)
        self.conv_in = nn.Conv2d(1, c, 3, padding=1)
        self.down1 = nn.ModuleList([_ResBlock(c, c, emb), _ResBlock(c, c, emb)])
        self.pool = nn.Conv2d(c, c2, 3, stride=2, padding=1)
        self.down2 = nn.ModuleList([_ResBlock(c2, c2, emb), _ResBlock(c2, c2, emb)])
        self.mid = _ResBlock(c2, c2, emb)
        self.up2 = nn.ModuleList([_ResBlock(2 * c2, c2, emb), _ResBlock(c2, c2, emb)])
        self.unpool = nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(c2, c, 3, padding=1))
        self.up1 = nn.ModuleList([_ResBlock(2 * c, c, emb), _ResBlock(c, c, emb)])
        self.out = nn.Sequential(nn.GroupNorm(8, c), nn.SiLU(), nn.Conv2d(c, 1, 3, padding=1))

    def forward(self, x: torch.Tensor, t: torch.Tensor, class_labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        if class_labels is None:
            class_labels = torch.full((x.shape[0],), NULL_CLASS, dtype=torch.long, device=x.device)
        e = self.time(timestep_embedding(t * self.time_scale, self.emb_dim).to(x.dtype)) + self.label(class_labels)
        h = self.conv_in(x)
        for block in self.down1:
            h = block(h, e)
        skip1 = h
        h = self.pool(h)
        for block in self.down2:
            h = block(h, e)
        skip2 = h
        h = self.mid(h, e)
        h = self.up2[0](torch.cat([h, skip2], 1), e)
        h = self.up2[1](h, e)
        h = self.unpool(h)
        h = self.up1[0](torch.cat([h, skip1], 1), e)
        h = self.up1[1](h, e)
        return self.out(h)


class DigitsClassifier(nn.Module):
    """A small CNN on 1x8x8 digits; ``features`` is the penultimate (128-d) layer. With
    ``time_conditioned`` it also takes a timestep (FiLM on every conv), for noised inputs
    (classifier guidance, Dhariwal & Nichol 2021)."""

    def __init__(self, time_conditioned: bool = False, emb: int = 64, time_scale: float = 1.0):
        super().__init__()
        self.time_conditioned, self.emb_dim, self.time_scale = time_conditioned, emb, time_scale
        self.convs = nn.ModuleList([nn.Conv2d(1, 32, 3, padding=1), nn.Conv2d(32, 64, 3, padding=1),
                                    nn.Conv2d(64, 128, 3, padding=1)])
        self.films = nn.ModuleList([nn.Linear(emb, 2 * c) for c in (32, 64, 128)]) if time_conditioned else None
        self.fc = nn.Linear(128, 128)
        self.head = nn.Linear(128, NUM_CLASSES)

    def features(self, x: torch.Tensor, t: Optional[torch.Tensor] = None) -> torch.Tensor:
        e = timestep_embedding(t * self.time_scale, self.emb_dim).to(x.dtype) if self.time_conditioned else None
        h = x
        for i, conv in enumerate(self.convs):
            h = conv(h)
            if self.films is not None:
                scale, shift = self.films[i](e).chunk(2, dim=-1)
                h = h * (1 + scale[:, :, None, None]) + shift[:, :, None, None]
            h = nn.functional.silu(h)
            if i == 1:
                h = nn.functional.avg_pool2d(h, 2)
        return nn.functional.silu(self.fc(h.mean(dim=(2, 3))))

    def forward(self, x: torch.Tensor, t: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.head(self.features(x, t))
