"""Networks: LayerNorm MLPs, a critic ensemble, a tanh-Gaussian actor and a small image encoder (the flow
actor family is in ``flow.py``). Actors offer ``sample`` (action, log-probability) and ``mode``.

Image path (DrQ / SERL style): every camera goes through one shared ``ConvTrunk`` (uint8 in, /255
inside); an ``ObsEmbedding`` squeezes each camera's conv features to ``encoder_dim`` and embeds the
state the same way, then concatenates. The critic and the actor each own an ``ObsEmbedding``; the
conv trunk belongs to the critic's optimiser, and the actor sees detached conv features, so only
critic gradients shape the convolutions.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from user_common.features import Features

_LOG_2 = math.log(2.0)
_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


def mlp(in_dim: int, hidden_dims: Sequence[int], out_dim: int | None = None) -> nn.Sequential:
    """Linear -> LayerNorm -> ReLU per hidden layer, then a plain Linear to ``out_dim`` (if given)."""
    layers: list[nn.Module] = []
    for width in hidden_dims:
        layers += [nn.Linear(in_dim, width), nn.LayerNorm(width), nn.ReLU()]
        in_dim = width
    if out_dim is not None:
        layers.append(nn.Linear(in_dim, out_dim))
    return nn.Sequential(*layers)


class ConvTrunk(nn.Module):
    """Shared conv layers: uint8 ``[B, n, H, W, 3]`` -> float features ``[B, n, out_dim]``.

    Four 3x3 convolutions with strides 2, 2, 2, 1 (128x128 -> 13x13x32 = 5408 features per camera):
    about 16 MMAC per image, cheap enough for 10 Hz inference on a CPU.
    """

    def __init__(self, image_size: tuple[int, int], channels: int = 32,
                 strides: Sequence[int] = (2, 2, 2, 1), downsample: int = 1) -> None:
        super().__init__()
        # Average-pool the input by this factor first: 2 makes the trunk about 4x cheaper on a CPU.
        self.downsample = int(downsample)
        layers: list[nn.Module] = []
        in_ch = 3
        for stride in strides:
            # in-place ReLU: the activations of a 128x128 batch are the memory (and time) bottleneck on CPU
            layers += [nn.Conv2d(in_ch, channels, kernel_size=3, stride=stride), nn.ReLU(inplace=True)]
            in_ch = channels
        self.net = nn.Sequential(*layers)
        width, height = image_size
        with torch.no_grad():
            probe = torch.zeros(1, 3, height // self.downsample, width // self.downsample)
            self.out_dim = int(self.net(probe).numel())

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """Encode ``[B, n, H, W, 3]`` uint8 pixels into ``[B, n, out_dim]`` features."""
        b, n, h, w, c = pixels.shape
        # The permute keeps NHWC memory (channels_last), which the CPU convolutions handle well.
        x = pixels.reshape(b * n, h, w, c).permute(0, 3, 1, 2).float().div_(255.0).sub_(0.5)
        if self.downsample > 1:
            x = F.avg_pool2d(x, self.downsample)
        return self.net(x).reshape(b, n, -1)


class ObsEmbedding(nn.Module):
    """Conv features of every camera plus the state -> one vector (identity on the state if no cameras)."""

    def __init__(self, spec: Features, conv_dim: int, encoder_dim: int) -> None:
        super().__init__()
        # One bottleneck per camera: the views differ, only the conv trunk is shared.
        self.image_heads = nn.ModuleList(
            nn.Sequential(nn.Linear(conv_dim, encoder_dim), nn.LayerNorm(encoder_dim), nn.Tanh())
            for _ in spec.cameras)
        self.state_head: nn.Module | None = None
        if spec.cameras and spec.state_dim > 0:
            self.state_head = nn.Sequential(nn.Linear(spec.state_dim, encoder_dim), nn.LayerNorm(encoder_dim),
                                            nn.Tanh())
        if spec.cameras:
            self.out_dim = encoder_dim * (spec.n_cameras + (1 if self.state_head is not None else 0))
        else:
            self.out_dim = spec.state_dim

    def forward(self, conv_feats: torch.Tensor | None, state: torch.Tensor) -> torch.Tensor:
        """Embed ``conv_feats [B, n, F]`` (None without cameras) and ``state [B, D]`` into ``[B, out_dim]``."""
        if conv_feats is None:
            return state
        parts = [head(conv_feats[:, i]) for i, head in enumerate(self.image_heads)]
        if self.state_head is not None:
            parts.append(self.state_head(state))
        return torch.cat(parts, dim=-1)


class EnsembleLinear(nn.Module):
    """``n`` independent linear layers applied in one batched matmul: ``[n, B, in] -> [n, B, out]``."""

    def __init__(self, n: int, in_dim: int, out_dim: int) -> None:
        super().__init__()
        bound = 1.0 / math.sqrt(in_dim)  # the same range as nn.Linear's default initialisation
        self.weight = nn.Parameter(torch.empty(n, in_dim, out_dim).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(n, 1, out_dim).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply member i's layer to ``x[i]``."""
        return torch.baddbmm(self.bias, x, self.weight)


class EnsembleLayerNorm(nn.Module):
    """LayerNorm over the last dim with a separate gain and bias per ensemble member."""

    def __init__(self, n: int, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n, 1, dim))
        self.bias = nn.Parameter(torch.zeros(n, 1, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise ``[n, B, dim]`` and apply each member's gain and bias."""
        return torch.addcmul(self.bias, F.layer_norm(x, x.shape[-1:]), self.weight)


class QEnsemble(nn.Module):
    """``n`` Q-heads (LayerNorm MLPs) evaluated together: ``[B, in] -> [n, B]``."""

    def __init__(self, in_dim: int, hidden_dims: Sequence[int], n: int) -> None:
        super().__init__()
        self.n = n
        layers: list[nn.Module] = []
        for width in hidden_dims:
            layers += [EnsembleLinear(n, in_dim, width), EnsembleLayerNorm(n, width), nn.ReLU()]
            in_dim = width
        layers.append(EnsembleLinear(n, in_dim, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Q-values ``[n, B]`` of every head for the same inputs ``[B, in]``."""
        return self.net(x.unsqueeze(0).expand(self.n, -1, -1)).squeeze(-1)


class Critic(nn.Module):
    """Q-ensemble over (observation embedding, action)."""

    def __init__(self, spec: Features, conv_dim: int, encoder_dim: int, hidden_dims: Sequence[int],
                 ensemble: int) -> None:
        super().__init__()
        self.embed = ObsEmbedding(spec, conv_dim, encoder_dim)
        self.q = QEnsemble(self.embed.out_dim + spec.action_dim, hidden_dims, ensemble)

    def forward(self, conv_feats: torch.Tensor | None, state: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """Q-values of every ensemble member, ``[n, B]``."""
        return self.q(torch.cat([self.embed(conv_feats, state), action], dim=-1))


class Actor(nn.Module):
    """Gaussian policy head; actions are ``tanh`` of a Gaussian sample (see ``squashed_sample``)."""

    def __init__(self, spec: Features, conv_dim: int, encoder_dim: int, hidden_dims: Sequence[int],
                 log_std_min: float, log_std_max: float) -> None:
        super().__init__()
        self.embed = ObsEmbedding(spec, conv_dim, encoder_dim)
        self.trunk = mlp(self.embed.out_dim, hidden_dims)
        width = hidden_dims[-1] if hidden_dims else self.embed.out_dim
        self.mean = nn.Linear(width, spec.action_dim)
        self.log_std = nn.Linear(width, spec.action_dim)
        self.log_std_min, self.log_std_max = log_std_min, log_std_max

    def forward(self, conv_feats: torch.Tensor | None, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pre-squash mean and log-std, each ``[B, action_dim]``."""
        h = self.trunk(self.embed(conv_feats, state))
        # A smooth squash into [min, max] instead of a hard clamp keeps gradients alive at the bounds.
        log_std = torch.tanh(self.log_std(h))
        log_std = self.log_std_min + 0.5 * (self.log_std_max - self.log_std_min) * (log_std + 1.0)
        return self.mean(h), log_std

    def sample(self, conv_feats: torch.Tensor | None, state: torch.Tensor,
               generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
        """A reparameterised action ``[B, A]`` in (-1, 1) and its log-probability ``[B]``."""
        return squashed_sample(*self(conv_feats, state), generator)

    def mode(self, conv_feats: torch.Tensor | None, state: torch.Tensor) -> torch.Tensor:
        """The deterministic action (evaluation): tanh of the mean."""
        return torch.tanh(self(conv_feats, state)[0])


def squashed_sample(mean: torch.Tensor, log_std: torch.Tensor,
                    generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Reparameterised ``a = tanh(mean + std * eps)`` and its log-probability ``[B]``."""
    eps = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
    u = mean + log_std.exp() * eps
    gaussian_logp = (-0.5 * eps.pow(2) - log_std - _HALF_LOG_2PI).sum(-1)
    # log(1 - tanh(u)^2) written in a form that stays finite for large |u|
    log_det = (2.0 * (_LOG_2 - u - F.softplus(-2.0 * u))).sum(-1)
    return torch.tanh(u), gaussian_logp - log_det


def random_shift(pixels: torch.Tensor, pad: int, generator: torch.Generator | None) -> torch.Tensor:
    """DrQ augmentation: replicate-pad every image by ``pad`` and crop back at a random offset.

    Works on uint8 ``[B, n, H, W, C]`` and draws an independent shift per image (sample and camera).
    """
    if pad <= 0:
        return pixels
    b, n, h, w, c = pixels.shape
    flat = pixels.reshape(b * n, h, w, c)
    # Replicate padding by concatenating edge rows/columns: whole-block copies, ~10x faster on CPU
    # than a per-pixel gather (and F.pad's replicate mode does not take uint8).
    x = torch.cat([flat[:, :1].expand(-1, pad, -1, -1), flat, flat[:, -1:].expand(-1, pad, -1, -1)], dim=1)
    x = torch.cat([x[:, :, :1].expand(-1, -1, pad, -1), x, x[:, :, -1:].expand(-1, -1, pad, -1)], dim=2)
    offsets = torch.randint(0, 2 * pad + 1, (b * n, 2), generator=generator, device=pixels.device).tolist()
    out = torch.empty_like(flat)
    for i, (dy, dx) in enumerate(offsets):
        out[i] = x[i, dy:dy + h, dx:dx + w]
    return out.reshape(b, n, h, w, c)
