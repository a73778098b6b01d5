"""SAC: a tanh-Gaussian actor, a LayerNorm critic ensemble (optionally REDQ subsets), automatic
temperature, DrQ augmentation for images."""
from __future__ import annotations

from .. import Algorithm, register
from .agent import SACAgent, SACConfig, SACPolicy

__all__ = ["SACAgent", "SACConfig", "SACPolicy", "ALGORITHM"]

ALGORITHM = register(Algorithm("sac", SACConfig, SACAgent, SACPolicy,
                               summary="soft actor-critic with a critic ensemble (SERL / DrQ settings)"))
