"""HG-DAgger's learner (Kelly et al., 2019): behaviour cloning on the steps an expert controlled.

The policy drives the robot and a human (in simulation, the scripted expert playing one) takes over
when needed. Every step an expert controlled is a label: demonstrations and online steps whose
``action_source`` is human or scripted; the policy's own steps are not. An update maximises the
likelihood of the expert's actions under SAC's tanh-Gaussian actor (so state and image policies
both work, and the inference side is ``SACPolicy``) over the labelled rows of the batch only.
"""
from __future__ import annotations

import copy
import dataclasses
import math
from typing import Any

import torch

from user_common.features import Features

from .. import Algorithm, register
from ..sac.agent import (SACConfig, SACPolicy, _build_policy_nets, _numpy_rng_state, _set_numpy_rng_state,
                         policy_weights)
from ...batch import check_batch
from ...networks import random_shift

__all__ = ["HGDAggerAgent", "HGDAggerConfig", "ALGORITHM", "ExpertSources", "expert_log_likelihood"]

STATE_DICT_VERSION = 1
SOURCE_HUMAN, SOURCE_SCRIPTED = 1, 2          # user_msgs/Action.SOURCE_*


class ExpertSources:
    """The action sources that are labels (a config's ``expert_sources``): ``labels(source)`` is True
    where a batch's ``action_source`` (or ``chunk_source``) names one of them."""

    def __init__(self, sources: tuple[int, ...], device: torch.device | str = "cpu") -> None:
        if not sources:
            raise ValueError("expert_sources: name at least one action source")
        self.sources = torch.tensor(sources, dtype=torch.float32, device=device)

    def labels(self, source: torch.Tensor) -> torch.Tensor:
        return torch.isin(source.to(torch.float32), self.sources)   # sources arrive as float32 in a batch


@dataclasses.dataclass
class HGDAggerConfig(SACConfig):
    """SAC's network fields (``hidden_dims``, ``encoder_dim``, conv settings, ``actor: gaussian``) and
    ``actor_lr`` apply; the critic and temperature fields are unused."""

    expert_sources: tuple[int, ...] = (SOURCE_HUMAN, SOURCE_SCRIPTED)   # action sources that are labels
    action_clip: float = 0.999     # expert actions are clipped to this before the inverse tanh

    def validate(self) -> None:
        super().validate()
        if self.actor != "gaussian":
            raise ValueError(f"actor: hg_dagger clones with the tanh-Gaussian actor, got {self.actor!r}")
        ExpertSources(self.expert_sources)
        if not 0.0 < self.action_clip < 1.0:
            raise ValueError(f"action_clip: must be in (0, 1), got {self.action_clip!r}")


def expert_log_likelihood(mean: torch.Tensor, log_std: torch.Tensor, action: torch.Tensor,
                          clip: float) -> torch.Tensor:
    """log pi(a | s) ``[B]`` of actions ``a`` in [-1, 1] under ``tanh(N(mean, std))``."""
    a = action.clamp(-clip, clip)
    u = torch.atanh(a)
    gaussian = (-0.5 * ((u - mean) / log_std.exp()).pow(2) - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
    return gaussian - torch.log1p(-a.pow(2)).sum(-1)


class HGDAggerAgent:
    """The learner side: the actor (and conv trunk) and one optimiser."""

    def __init__(self, spec: Features, cfg: HGDAggerConfig, device: str | torch.device = "cpu") -> None:
        spec.validate()
        cfg.validate()
        self.spec, self.cfg, self.device = spec, cfg, torch.device(device)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            self.conv, self.actor = _build_policy_nets(spec, cfg)   # as SACPolicy builds them
        params = list(self.actor.parameters())
        if self.conv is not None:
            params += list(self.conv.parameters())
            self.conv.to(self.device)
        self.actor.to(self.device)
        self.opt = torch.optim.Adam(params, lr=cfg.actor_lr, foreach=True)
        self.experts = ExpertSources(cfg.expert_sources, self.device)
        self.generator = torch.Generator(self.device).manual_seed(cfg.seed)
        self.num_updates = 0
        self.labels_seen = 0

    def update(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        """One step of behaviour cloning on the batch's expert rows (a batch without any: no step)."""
        check_batch(batch, self.spec)
        b = {k: v.to(self.device) for k, v in batch.items()}
        labelled = self.experts.labels(b["action_source"])
        n = int(labelled.sum())
        self.num_updates += 1
        metrics = {"expert_fraction": n / len(labelled), "num_updates": float(self.num_updates)}
        if n == 0:
            return {**metrics, "bc_loss": float("nan")}
        feats = None
        if self.conv is not None:
            feats = self.conv(random_shift(b["pixels"][labelled], self.cfg.image_augment_pad, self.generator))
        mean, log_std = self.actor(feats, b["state"][labelled])
        loss = -expert_log_likelihood(mean, log_std, b["action"][labelled], self.cfg.action_clip).mean()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.labels_seen += n
        with torch.no_grad():
            err = (torch.tanh(mean) - b["action"][labelled]).abs().mean()
            std = log_std.exp().mean()
        return {**metrics, "bc_loss": float(loss.detach()), "action_error": float(err), "std": float(std)}

    def policy_state_dict(self) -> dict[str, torch.Tensor]:
        """What ``SACPolicy`` loads: actor and conv trunk (CPU copies)."""
        return policy_weights(self.conv, self.actor)

    def state_dict(self) -> dict[str, Any]:
        """Networks, optimiser, counters and RNG states (tensors and plain values only)."""
        nets = {"actor": self.actor.state_dict()}
        if self.conv is not None:
            nets["conv"] = self.conv.state_dict()
        return copy.deepcopy({
            "version": STATE_DICT_VERSION, "spec": dataclasses.asdict(self.spec),
            "config": dataclasses.asdict(self.cfg), "nets": nets, "optimizer": self.opt.state_dict(),
            "num_updates": self.num_updates, "labels_seen": self.labels_seen,
            "rng": {"generator": self.generator.get_state(), "torch": torch.get_rng_state(),
                    "numpy": _numpy_rng_state()},
        })

    def load_state_dict(self, d: dict[str, Any]) -> None:
        if d.get("version") != STATE_DICT_VERSION:
            raise ValueError(f"state dict version {d.get('version')!r} is not {STATE_DICT_VERSION}")
        self.actor.load_state_dict(d["nets"]["actor"])
        if self.conv is not None:
            self.conv.load_state_dict(d["nets"]["conv"])
        self.opt.load_state_dict(d["optimizer"])
        self.num_updates, self.labels_seen = int(d["num_updates"]), int(d["labels_seen"])
        self.generator.set_state(d["rng"]["generator"])
        torch.set_rng_state(d["rng"]["torch"])
        _set_numpy_rng_state(d["rng"]["numpy"])


ALGORITHM = register(Algorithm("hg_dagger", HGDAggerConfig, HGDAggerAgent, SACPolicy, needs_demos=True,
                               batch_extras=("action_source", "intervened"),
                               summary="behaviour cloning on demonstrations and human interventions"))
