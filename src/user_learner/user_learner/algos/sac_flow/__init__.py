"""SAC-Flow (Zhang et al., arXiv 2509.25756): SAC whose actor is a flow policy, K noisy Euler steps of a
velocity field with the log-probability of the whole rollout (``user_learner/flow.py``). The agent and
policy are SAC's with ``actor: flow_g`` (gated velocity) by default, or ``flow_t`` (transformer)."""
from __future__ import annotations

import dataclasses
from typing import Literal

from .. import Algorithm, register
from ..sac import SACAgent, SACConfig, SACPolicy

__all__ = ["SACFlowConfig", "ALGORITHM"]


@dataclasses.dataclass
class SACFlowConfig(SACConfig):
    actor: Literal["flow_g", "flow_t"] = "flow_g"


ALGORITHM = register(Algorithm("sac_flow", SACFlowConfig, SACAgent, SACPolicy,
                               summary="SAC with a flow-matching actor (Flow-G or Flow-T)"))
