"""RLPD (Ball et al., 2023): SAC that learns from demonstrations and its own data at once.

Half of every batch comes from a demonstration bag (``replay.demo_dir``, ``replay.demo_ratio: 0.5``);
a LayerNorm critic ensemble of 10 heads whose target is the minimum over a random pair; several
critic updates per actor update; no entropy term in the backup. Defaults follow RLinf's real-world
peg-insertion RLPD config (batch 256, discount 0.96, critic-to-actor ratio 4, temperature 0.01, target
entropy -3). The agent and policy are SAC's: RLPD is a way of running it.
"""
from __future__ import annotations

import dataclasses

from .. import Algorithm, register
from ..sac import SACAgent, SACConfig, SACPolicy

__all__ = ["RLPDConfig", "ALGORITHM"]


@dataclasses.dataclass
class RLPDConfig(SACConfig):
    discount: float = 0.96
    critic_actor_ratio: int = 4
    critic_ensemble: int = 10
    critic_subsample: int | None = 2
    init_temperature: float = 0.01
    target_entropy: float | None = -3.0
    backup_entropy: bool = False


ALGORITHM = register(Algorithm("rlpd", RLPDConfig, SACAgent, SACPolicy, needs_demos=True,
                               summary="SAC on half demonstrations, half online data (10 critics, min of 2)"))
