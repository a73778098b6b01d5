"""Soft Actor-Critic with a critic ensemble and DrQ image augmentation, as used by SERL / HIL-SERL.

``SACAgent`` is the learner side (all networks, optimisers, the update); ``SACPolicy`` is the light
inference side built from the same ``Features`` + ``SACConfig`` and fed with
``SACAgent.policy_state_dict()``. Neither knows anything about ROS.

One ``update`` call is one critic step::

    y      = r + discount * (1 - terminated) * min_{j in subset} Q'_j(s', a'),   a' ~ pi(s')
             (minus alpha * log pi(a'|s') inside the min-term if backup_entropy)
    L_Q    = sum_j mean_B (Q_j(s, a) - y)^2

and every ``critic_actor_ratio``-th call also an actor and a temperature step::

    L_pi    = mean_B [ alpha * log pi(a|s) - mean_j Q_j(s, a) ],   a ~ pi(s)
    L_alpha = -log_alpha * mean_B [ log pi(a|s) + target_entropy ]

``pi`` is the actor family ``actor`` names: a tanh-Gaussian MLP, or a flow (``flow.py``), which is
SAC-Flow. The target critic (embeddings + Q-heads) follows by Polyak averaging after every critic step. As in
DrQ-v2, there is no target conv trunk: next observations are encoded by the online trunk (no grad), and
the actor step reuses the detached conv features of the critic step; this halves the image work per
update, which dominates on a CPU.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
from typing import Any, Iterator, Literal

import numpy as np
import torch
from torch import nn

from user_common.features import Features

from ...batch import check_batch, obs_to_tensors
from ...flow import FlowActor
from ...networks import Actor, ConvTrunk, Critic, random_shift
from ..base import AlgoConfig

STATE_DICT_VERSION = 1


@dataclasses.dataclass
class SACConfig(AlgoConfig):
    """Every SAC hyper-parameter (plus ``batch_size`` and ``seed`` from ``AlgoConfig``). Defaults follow
    the SERL / HIL-SERL peg-insertion (DrQ) settings."""

    discount: float = 0.97                # SERL peg insertion; ~33-step horizon at 10 Hz
    actor_lr: float = 3e-4
    critic_lr: float = 3e-4
    temp_lr: float = 3e-4
    tau: float = 0.005                    # Polyak rate of the target critic
    init_temperature: float = 0.01        # SERL temperature_init=1e-2: rewards are sparse 0/1
    target_entropy: float | None = None   # None -> -action_dim / 2 (SERL)
    critic_actor_ratio: int = 2           # critic updates per actor + temperature update
    critic_ensemble: int = 2
    critic_subsample: int | None = None   # REDQ: min over a random subset of this many heads; None = all
    hidden_dims: tuple[int, ...] = (256, 256)
    encoder_dim: int = 64                 # per camera bottleneck (and state embedding) width
    conv_channels: int = 32
    image_augment_pad: int = 4            # DrQ random shift, pixels; 0 disables
    image_downsample: int = 1             # average-pool images by this factor inside the encoder
    backup_entropy: bool = False          # SERL / RLPD: no entropy term in the TD target
    log_std_min: float = -5.0
    log_std_max: float = 2.0
    # The actor family: a tanh-Gaussian MLP, or a flow (SAC-Flow: K noisy Euler steps of a velocity field,
    # gated (flow_g) or a transformer decoder (flow_t); see flow.py). flow_* keys matter only to flows.
    actor: Literal["gaussian", "flow_g", "flow_t"] = "gaussian"
    flow_steps: int = 4
    flow_sigma_min: float = 0.05          # the per-step noise scale is learned within [min, max]
    flow_sigma_max: float = 0.5
    flow_d_model: int = 64                # flow_t: width, heads and layers of the decoder
    flow_heads: int = 4
    flow_layers: int = 2

    def resolved_target_entropy(self, action_dim: int) -> float:
        """The entropy the temperature steers towards."""
        return -action_dim / 2.0 if self.target_entropy is None else float(self.target_entropy)

    def validate(self) -> None:
        """Raise ``ValueError("key: problem")`` for an unusable value (the form ``load_dataclass`` reports)."""
        super().validate()
        positive = ("actor_lr", "critic_lr", "temp_lr", "init_temperature", "critic_actor_ratio",
                    "critic_ensemble", "encoder_dim", "conv_channels", "image_downsample")
        for key in positive:
            if not getattr(self, key) > 0:
                raise ValueError(f"{key}: must be > 0, got {getattr(self, key)!r}")
        if not 0.0 <= self.discount <= 1.0:
            raise ValueError(f"discount: must be in [0, 1], got {self.discount!r}")
        if not 0.0 < self.tau <= 1.0:
            raise ValueError(f"tau: must be in (0, 1], got {self.tau!r}")
        if self.critic_subsample is not None and not 1 <= self.critic_subsample <= self.critic_ensemble:
            raise ValueError(f"critic_subsample: must be in [1, critic_ensemble={self.critic_ensemble}] or null, "
                             f"got {self.critic_subsample!r}")
        if any(w <= 0 for w in self.hidden_dims):
            raise ValueError(f"hidden_dims: widths must be > 0, got {list(self.hidden_dims)}")
        if self.image_augment_pad < 0:
            raise ValueError(f"image_augment_pad: must be >= 0, got {self.image_augment_pad!r}")
        if self.flow_steps <= 0:
            raise ValueError(f"flow_steps: must be > 0, got {self.flow_steps!r}")
        if not 0 < self.flow_sigma_min <= self.flow_sigma_max:
            raise ValueError(f"flow_sigma_min: must be in (0, flow_sigma_max={self.flow_sigma_max}], "
                             f"got {self.flow_sigma_min!r}")
        if self.actor == "flow_t" and self.flow_d_model % self.flow_heads:
            raise ValueError(f"flow_heads: must divide flow_d_model={self.flow_d_model}, got {self.flow_heads!r}")
        if not self.log_std_min < self.log_std_max:
            raise ValueError(f"log_std_min: must be < log_std_max ({self.log_std_max}), got {self.log_std_min!r}")


def _build_policy_nets(spec: Features, cfg: SACConfig) -> tuple[ConvTrunk | None, Actor | FlowActor]:
    """The networks inference needs; built first so SACAgent and SACPolicy start from identical weights."""
    conv = ConvTrunk(spec.image_size, cfg.conv_channels, downsample=cfg.image_downsample) if spec.cameras else None
    conv_dim = conv.out_dim if conv else 0
    if cfg.actor == "gaussian":
        actor: nn.Module = Actor(spec, conv_dim, cfg.encoder_dim, cfg.hidden_dims, cfg.log_std_min, cfg.log_std_max)
    else:
        actor = FlowActor(spec, conv_dim, cfg.encoder_dim, cfg.hidden_dims,
                          velocity="gated" if cfg.actor == "flow_g" else "transformer", steps=cfg.flow_steps,
                          sigma_min=cfg.flow_sigma_min, sigma_max=cfg.flow_sigma_max, d_model=cfg.flow_d_model,
                          heads=cfg.flow_heads, layers=cfg.flow_layers)
    return conv, actor


def policy_weights(conv: ConvTrunk | None, actor: nn.Module) -> dict[str, torch.Tensor]:
    """CPU copies of what ``SACPolicy.load_policy_state_dict`` takes: ``actor.*`` and ``conv.*``."""
    out = {f"actor.{k}": v.detach().to("cpu", copy=True) for k, v in actor.state_dict().items()}
    if conv is not None:
        out.update({f"conv.{k}": v.detach().to("cpu", copy=True) for k, v in conv.state_dict().items()})
    return out


def _policy_action(conv: ConvTrunk | None, actor: Actor | FlowActor, spec: Features, state: np.ndarray,
                   pixels: np.ndarray | None, deterministic: bool, generator: torch.Generator,
                   device: torch.device) -> np.ndarray:
    """One observation -> one action in ``[-1, 1]^A`` (float32); callers hold inference mode."""
    if (pixels is None) != (not spec.cameras):
        wanted = f"pixels for cameras {list(spec.cameras)}" if spec.cameras else "no pixels (state-only policy)"
        raise ValueError(f"act: expected {wanted}, got {'none' if pixels is None else 'pixels'}")
    obs = obs_to_tensors(state, pixels, device)
    if obs["state"].shape[1] != spec.state_dim:
        raise ValueError(f"act: state must have {spec.state_dim} values, got {obs['state'].shape[1]}")
    if pixels is not None and tuple(obs["pixels"].shape[1:]) != spec.image_shape:
        raise ValueError(f"act: pixels must be {list(spec.image_shape)}, got {list(obs['pixels'].shape[1:])}")
    feats = conv(obs["pixels"]) if conv is not None else None
    action = actor.mode(feats, obs["state"]) if deterministic else actor.sample(feats, obs["state"], generator)[0]
    return action[0].to("cpu", torch.float32).numpy()


@contextlib.contextmanager
def _frozen(module: nn.Module) -> Iterator[None]:
    """Stop gradients into ``module``'s parameters (the actor loss must not touch the critic)."""
    params = [p for p in module.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def _numpy_rng_state() -> dict[str, Any]:
    # Stored as tensors and plain numbers so checkpoints load with torch.load(weights_only=True).
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}


def _set_numpy_rng_state(d: dict[str, Any]) -> None:
    np.random.set_state((d["name"], d["keys"].numpy().astype(np.uint32), d["pos"], d["has_gauss"],
                         d["cached_gaussian"]))


class SACAgent:
    """The learner side of SAC: networks, target networks, optimisers, temperature. Not thread-safe."""

    def __init__(self, spec: Features, cfg: SACConfig, device: str | torch.device = "cpu") -> None:
        spec.validate()
        cfg.validate()
        self.spec, self.cfg, self.device = spec, cfg, torch.device(device)
        # Seeded construction without disturbing the caller's global RNG stream.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            self.conv, self.actor = _build_policy_nets(spec, cfg)
            self.critic = Critic(spec, self.conv.out_dim if self.conv else 0, cfg.encoder_dim, cfg.hidden_dims,
                                 cfg.critic_ensemble)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        for module in self._modules().values():
            if module is not None:
                module.to(self.device)
        self.log_alpha = torch.tensor(math.log(cfg.init_temperature), device=self.device, requires_grad=True)
        # The conv trunk is trained by the critic loss only (the actor sees detached features).
        critic_params = list(self.critic.parameters()) + (list(self.conv.parameters()) if self.conv else [])
        self.critic_opt = torch.optim.Adam(critic_params, lr=cfg.critic_lr, foreach=True)
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=cfg.actor_lr, foreach=True)
        self.temp_opt = torch.optim.Adam([self.log_alpha], lr=cfg.temp_lr, foreach=True)
        self.target_entropy = cfg.resolved_target_entropy(spec.action_dim)
        # One generator for every random draw of the algorithm (sampling, augmentation, REDQ subsets),
        # so a restored agent continues bit-identically.
        self.generator = torch.Generator(self.device).manual_seed(cfg.seed)
        self.num_updates = 0
        nan = float("nan")
        self._actor_metrics = {"actor_loss": nan, "temperature_loss": nan, "entropy": nan,
                               "temperature": self.temperature}

    # ---------------------------------------------------------------- properties
    @property
    def temperature(self) -> float:
        """Current entropy temperature alpha."""
        return float(self.log_alpha.detach().exp())

    def _modules(self) -> dict[str, nn.Module | None]:
        return {"conv": self.conv, "actor": self.actor, "critic": self.critic, "critic_target": self.critic_target}

    # ---------------------------------------------------------------- training
    def update(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        """One critic step; every ``critic_actor_ratio``-th call also an actor + temperature step.

        Returns scalar metrics; actor metrics are those of the latest actor step (NaN before the first).
        """
        state, pixels, rest = self._prepare(batch)
        metrics, feats = self._critic_step(state, pixels, rest)
        self.num_updates += 1
        if self.num_updates % self.cfg.critic_actor_ratio == 0:
            self._actor_metrics = self._actor_step(state, feats)
        return {**metrics, **self._actor_metrics, "num_updates": float(self.num_updates)}

    def update_critic(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        """Only a critic step (plus target update); does not count as an ``update``."""
        state, pixels, rest = self._prepare(batch)
        return self._critic_step(state, pixels, rest)[0]

    def update_actor(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        """Only an actor + temperature step; does not count as an ``update``."""
        state, pixels, _ = self._prepare(batch)
        with torch.no_grad():
            feats = self.conv(pixels) if self.conv is not None else None
        self._actor_metrics = self._actor_step(state, feats)
        return dict(self._actor_metrics)

    def _prepare(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None,
                                                                 dict[str, torch.Tensor]]:
        check_batch(batch, self.spec)
        b = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
        pixels = None
        if self.conv is not None:
            # Fresh, independent shifts for both observations on every step (augmentation only in updates).
            pixels = random_shift(b["pixels"], self.cfg.image_augment_pad, self.generator)
            b["next_pixels"] = random_shift(b["next_pixels"], self.cfg.image_augment_pad, self.generator)
        return b["state"], pixels, b

    def _critic_step(self, state: torch.Tensor, pixels: torch.Tensor | None,
                     b: dict[str, torch.Tensor]) -> tuple[dict[str, float], torch.Tensor | None]:
        """One critic step; returns metrics and the detached conv features of ``pixels`` (or None)."""
        cfg = self.cfg
        with torch.no_grad():
            next_feats = self.conv(b["next_pixels"]) if self.conv is not None else None
            next_action, next_logp = self.actor.sample(next_feats, b["next_state"], self.generator)
            next_q = self.critic_target(next_feats, b["next_state"], next_action)
            if cfg.critic_subsample is not None and cfg.critic_subsample < cfg.critic_ensemble:
                heads = torch.randperm(cfg.critic_ensemble, generator=self.generator, device=self.device)
                next_q = next_q[heads[:cfg.critic_subsample]]
            next_v = next_q.min(dim=0).values
            if cfg.backup_entropy:
                next_v = next_v - self.log_alpha.exp() * next_logp
            target = b["reward"] + cfg.discount * (1.0 - b["terminated"]) * next_v

        feats = self.conv(pixels) if self.conv is not None else None
        q = self.critic(feats, state, b["action"])
        loss = (q - target.unsqueeze(0)).pow(2).mean(dim=1).sum()
        self.critic_opt.zero_grad(set_to_none=True)
        loss.backward()
        self.critic_opt.step()
        self._soft_update_targets()
        metrics = {"critic_loss": loss.item(), "q_mean": q.mean().item(),
                   "q_std_ensemble": q.detach().std(0).mean().item() if cfg.critic_ensemble > 1 else 0.0,
                   "target_q_mean": target.mean().item(), "reward_mean": b["reward"].mean().item()}
        return metrics, feats.detach() if feats is not None else None

    def _actor_step(self, state: torch.Tensor, feats: torch.Tensor | None) -> dict[str, float]:
        """Actor + temperature step on detached conv features (the actor never trains the encoder)."""
        action, logp = self.actor.sample(feats, state, self.generator)
        with _frozen(self.critic):
            q = self.critic(feats, state, action).mean(dim=0)
        alpha = self.log_alpha.detach().exp()
        actor_loss = (alpha * logp - q).mean()
        self.actor_opt.zero_grad(set_to_none=True)
        actor_loss.backward()
        self.actor_opt.step()

        logp = logp.detach()
        temp_loss = -(self.log_alpha * (logp + self.target_entropy)).mean()
        self.temp_opt.zero_grad(set_to_none=True)
        temp_loss.backward()
        self.temp_opt.step()
        return {"actor_loss": actor_loss.item(), "temperature_loss": temp_loss.item(),
                "entropy": -logp.mean().item(), "temperature": self.temperature}

    @torch.no_grad()
    def _soft_update_targets(self) -> None:
        torch._foreach_lerp_(list(self.critic_target.parameters()), list(self.critic.parameters()), self.cfg.tau)

    # ---------------------------------------------------------------- acting
    def act(self, state: np.ndarray, pixels: np.ndarray | None, deterministic: bool) -> np.ndarray:
        """Action in ``[-1, 1]^A`` for one observation (state ``[D]``, pixels uint8 ``[n, H, W, 3]`` or None)."""
        with torch.inference_mode():
            return _policy_action(self.conv, self.actor, self.spec, state, pixels, deterministic,
                                  self.generator, self.device)

    # ---------------------------------------------------------------- persistence
    def policy_state_dict(self) -> dict[str, torch.Tensor]:
        """Copies (on CPU) of exactly what ``SACPolicy`` needs: actor and conv trunk."""
        return policy_weights(self.conv, self.actor)

    def state_dict(self) -> dict[str, Any]:
        """A snapshot (deep copy) of everything needed to resume bit-identically.

        Holds only tensors and plain Python values, so it loads with ``torch.load(weights_only=True)``.
        Includes the global torch and numpy RNG states, which ``load_state_dict`` restores.
        """
        d = {
            "version": STATE_DICT_VERSION,
            "spec": dataclasses.asdict(self.spec),
            "config": dataclasses.asdict(self.cfg),
            "nets": {name: m.state_dict() for name, m in self._modules().items() if m is not None},
            "optimizers": {"critic": self.critic_opt.state_dict(), "actor": self.actor_opt.state_dict(),
                           "temperature": self.temp_opt.state_dict()},
            "log_alpha": self.log_alpha.detach(),
            "num_updates": self.num_updates,
            "actor_metrics": dict(self._actor_metrics),
            "rng": {"generator": self.generator.get_state(), "torch": torch.get_rng_state(),
                    "numpy": _numpy_rng_state()},
        }
        return copy.deepcopy(d)

    def load_state_dict(self, d: dict[str, Any]) -> None:
        """Restore a ``state_dict()`` snapshot (networks, optimisers, temperature, counters, RNG states)."""
        if d.get("version") != STATE_DICT_VERSION:
            raise ValueError(f"state dict version {d.get('version')!r} is not {STATE_DICT_VERSION}")
        for name, module in self._modules().items():
            if module is not None:
                module.load_state_dict(d["nets"][name])
        self.critic_opt.load_state_dict(d["optimizers"]["critic"])
        self.actor_opt.load_state_dict(d["optimizers"]["actor"])
        self.temp_opt.load_state_dict(d["optimizers"]["temperature"])
        with torch.no_grad():
            self.log_alpha.copy_(d["log_alpha"])
        self.num_updates = int(d["num_updates"])
        self._actor_metrics = dict(d["actor_metrics"])
        self.generator.set_state(d["rng"]["generator"])
        torch.set_rng_state(d["rng"]["torch"])
        _set_numpy_rng_state(d["rng"]["numpy"])


class SACPolicy:
    """The inference side: conv trunk + actor only, loaded from ``SACAgent.policy_state_dict()``."""

    chunk_size = 1

    def __init__(self, spec: Features, cfg: SACConfig, device: str | torch.device = "cpu") -> None:
        spec.validate()
        cfg.validate()
        self.spec, self.cfg, self.device = spec, cfg, torch.device(device)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            self.conv, self.actor = _build_policy_nets(spec, cfg)
        for module in (self.conv, self.actor):
            if module is not None:
                module.to(self.device).eval().requires_grad_(False)
        self._generator: torch.Generator | None = None   # used when a caller passes none

    def load_policy_state_dict(self, d: dict[str, torch.Tensor]) -> None:
        """Load weights from ``SACAgent.policy_state_dict()``; raises on missing or unexpected keys."""
        parts: dict[str, dict[str, torch.Tensor]] = {"actor": {}, "conv": {}}
        for key, value in d.items():
            prefix, _, rest = key.partition(".")
            if prefix not in parts or (prefix == "conv" and self.conv is None):
                raise KeyError(f"policy state dict: unexpected key {key!r}")
            parts[prefix][rest] = value
        self.actor.load_state_dict(parts["actor"])
        if self.conv is not None:
            self.conv.load_state_dict(parts["conv"])

    def act(self, state: np.ndarray, pixels: np.ndarray | None, deterministic: bool,
            generator: torch.Generator | None = None) -> np.ndarray:
        """Action in ``[-1, 1]^A`` for one observation; noise from ``generator`` (default: the policy's
        own, seeded with ``cfg.seed``); no autograd bookkeeping."""
        if generator is None:
            if self._generator is None:
                self._generator = torch.Generator(self.device).manual_seed(self.cfg.seed)
            generator = self._generator
        with torch.inference_mode():
            return _policy_action(self.conv, self.actor, self.spec, state, pixels, deterministic,
                                  generator, self.device)

    def act_batch(self, states: np.ndarray, pixels: np.ndarray | None, deterministic: list[bool],
                  generators: list[torch.Generator]) -> np.ndarray:
        """Actions ``[B, A]`` for B observations (states ``[B, D]``, pixels ``[B, n, H, W, 3]`` or None) in one
        forward pass; row i draws its noise from ``generators[i]`` exactly as ``act`` would."""
        if not isinstance(self.actor, Actor):   # a flow actor draws noise inside its rollout: one at a time
            return np.stack([self.act(states[i], None if pixels is None else pixels[i], deterministic[i],
                                      generators[i]) for i in range(len(states))])
        st = torch.from_numpy(np.asarray(states, dtype=np.float32)).to(self.device)
        if st.ndim != 2 or st.shape[1] != self.spec.state_dim:
            raise ValueError(f"act_batch: states must be [B, {self.spec.state_dim}], got {list(st.shape)}")
        with torch.inference_mode():
            feats = None
            if self.conv is not None:
                feats = self.conv(torch.from_numpy(np.ascontiguousarray(pixels)).to(self.device))
            mean, log_std = self.actor(feats, st)
            eps = torch.stack([torch.zeros(mean.shape[1:], dtype=mean.dtype, device=mean.device) if det
                               else torch.randn((1, *mean.shape[1:]), generator=g, dtype=mean.dtype,
                                                device=mean.device)[0]
                               for det, g in zip(deterministic, generators)])
            keep = torch.tensor([0.0 if det else 1.0 for det in deterministic], device=mean.device)[:, None]
            return torch.tanh(mean + keep * log_std.exp() * eps).to("cpu", torch.float32).numpy()
