"""Flow actors for SAC (SAC Flow, Zhang et al., arXiv 2509.25756): an action is ``steps`` Euler steps of
a velocity field conditioned on the observation, with Gaussian noise injected at every step:

    x_0 ~ N(0, I),   x_{k+1} = x_k + v(x_k, t_k, s) / K + sigma_k * eps_k,   a = tanh(x_K)
    log pi(a|s) = log N(x_0; 0, I) + sum_k log N(x_{k+1}; x_k + v / K, sigma_k^2) - sum log(1 - a^2)

The rollout is reparameterised (``eps`` drawn first), so gradients flow through every step. ``sigma_k``
is learned within ``[sigma_min, sigma_max]``: with a fixed sigma each per-step Gaussian term is a
constant of ``eps`` and the entropy would only flow through the tanh; its ``-log sigma`` is kept.
Acting deterministically (evaluation) starts from ``x_0 = 0`` and injects no noise.

Two velocity fields, as in the paper: ``gated`` (Flow-G, ``v = z * (h - x)`` with a sigmoid gate that
starts near 1, like a GRU update) and ``transformer`` (Flow-T, a small decoder whose query is
``(x_k, t_k)`` and whose memory is the observation's tokens: one per camera plus the state).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from user_common.features import Features

from .networks import ObsEmbedding, mlp

_LOG_2 = math.log(2.0)
_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)
GATE_BIAS = 3.0   # sigmoid(3) = 0.95: the gate starts nearly open


def time_embedding(t: float, dim: int, batch: int, like: torch.Tensor) -> torch.Tensor:
    """Sinusoidal embedding ``[batch, dim]`` of a time ``t`` in [0, 1]."""
    half = dim // 2
    freqs = torch.exp(torch.arange(half, dtype=like.dtype, device=like.device) * (-math.log(100.0) / max(half - 1, 1)))
    angles = (t * 100.0) * freqs
    emb = torch.cat([torch.sin(angles), torch.cos(angles)])
    return emb.unsqueeze(0).expand(batch, -1)


class GatedVelocity(nn.Module):
    """Flow-G: ``v = z * (h - x)``; returns the velocity and the noise scale's logit."""

    def __init__(self, obs_dim: int, action_dim: int, hidden_dims: Sequence[int], time_dim: int) -> None:
        super().__init__()
        in_dim = obs_dim + action_dim + time_dim
        self.h = mlp(in_dim, hidden_dims, action_dim)
        self.gate = nn.Linear(in_dim, action_dim)
        nn.init.constant_(self.gate.bias, GATE_BIAS)
        self.sigma = mlp(in_dim, hidden_dims[:1], action_dim)

    def forward(self, obs: torch.Tensor, x: torch.Tensor, temb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        inp = torch.cat([obs, x, temb], dim=-1)
        return torch.sigmoid(self.gate(inp)) * (self.h(inp) - x), self.sigma(inp)


class TransformerVelocity(nn.Module):
    """Flow-T: a decoder over the observation's tokens, queried by ``(x_k, t_k)``."""

    def __init__(self, tokens: int, token_dim: int, action_dim: int, d_model: int, heads: int, layers: int,
                 time_dim: int) -> None:
        super().__init__()
        self.tokens, self.token_dim = tokens, token_dim
        self.memory_in = nn.Linear(token_dim, d_model)
        self.position = nn.Parameter(torch.zeros(1, tokens, d_model))
        self.query_in = nn.Linear(action_dim + time_dim, d_model)
        layer = nn.TransformerDecoderLayer(d_model, heads, 2 * d_model, dropout=0.0, batch_first=True, norm_first=True)
        self.decoder = nn.TransformerDecoder(layer, layers)
        self.out = nn.Linear(d_model, 2 * action_dim)

    def forward(self, obs: torch.Tensor, x: torch.Tensor, temb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        memory = self.memory_in(obs.reshape(obs.shape[0], self.tokens, self.token_dim)) + self.position
        query = self.query_in(torch.cat([x, temb], dim=-1)).unsqueeze(1)
        v, sigma = self.out(self.decoder(query, memory)[:, 0]).chunk(2, dim=-1)
        return v, sigma


class FlowActor(nn.Module):
    """A flow policy; ``sample`` gives reparameterised actions and their log-probability, ``mode`` the
    noiseless rollout."""

    def __init__(self, spec: Features, conv_dim: int, encoder_dim: int, hidden_dims: Sequence[int],
                 velocity: str = "gated", steps: int = 4, sigma_min: float = 0.05, sigma_max: float = 0.5,
                 d_model: int = 64, heads: int = 4, layers: int = 2, time_dim: int = 16) -> None:
        super().__init__()
        self.embed = ObsEmbedding(spec, conv_dim, encoder_dim)
        self.steps, self.time_dim = int(steps), int(time_dim)
        self.log_sigma_min, self.log_sigma_max = math.log(sigma_min), math.log(sigma_max)
        a = spec.action_dim
        if velocity == "gated":
            self.field: nn.Module = GatedVelocity(self.embed.out_dim, a, hidden_dims, time_dim)
        elif velocity == "transformer":
            tokens = len(spec.cameras) + (1 if self.embed.state_head is not None else 0) if spec.cameras else 1
            self.field = TransformerVelocity(tokens, self.embed.out_dim // tokens, a, d_model, heads, layers, time_dim)
        else:
            raise ValueError(f"velocity: must be gated or transformer, got {velocity!r}")
        self.action_dim = a

    def rollout(self, conv_feats: torch.Tensor | None, state: torch.Tensor, generator: torch.Generator | None,
                noise: bool = True, trace: list | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(action [B, A], log_prob [B])``; with ``noise=False`` the log-probability is 0. ``trace``
        (a list) receives every step's ``(x_k, mu_k, sigma_k, x_{k+1})`` and ``x_0`` first."""
        obs = self.embed(conv_feats, state)
        b = obs.shape[0]
        shape = (b, self.action_dim)

        def randn() -> torch.Tensor:
            return torch.randn(shape, generator=generator, device=obs.device, dtype=obs.dtype)

        x = randn() if noise else obs.new_zeros(shape)
        logp = (-0.5 * x.pow(2) - _HALF_LOG_2PI).sum(-1) if noise else obs.new_zeros(b)
        if trace is not None:
            trace.append(x)
        dt = 1.0 / self.steps
        for k in range(self.steps):
            v, sigma_logit = self.field(obs, x, time_embedding(k * dt, self.time_dim, b, obs))
            mu = x + v * dt
            if noise:
                log_sigma = self.log_sigma_min + (self.log_sigma_max - self.log_sigma_min) * torch.sigmoid(sigma_logit)
                eps = randn()
                x_next = mu + log_sigma.exp() * eps
                logp = logp + (-0.5 * eps.pow(2) - log_sigma - _HALF_LOG_2PI).sum(-1)
            else:
                log_sigma, x_next = None, mu
            if trace is not None:
                trace.append((x, mu, None if log_sigma is None else log_sigma.exp(), x_next))
            x = x_next
        # log(1 - tanh(x)^2) in a form that stays finite for large |x|
        log_det = (2.0 * (_LOG_2 - x - F.softplus(-2.0 * x))).sum(-1)
        return torch.tanh(x), (logp - log_det) if noise else logp

    def sample(self, conv_feats: torch.Tensor | None, state: torch.Tensor,
               generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
        return self.rollout(conv_feats, state, generator, noise=True)

    def mode(self, conv_feats: torch.Tensor | None, state: torch.Tensor) -> torch.Tensor:
        return self.rollout(conv_feats, state, None, noise=False)[0]
