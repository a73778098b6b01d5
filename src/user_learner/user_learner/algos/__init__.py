"""Algorithms by name. An algorithm brings its config dataclass, an agent (the learner side) and a
policy (the inference side); the nodes look it up here and never import one directly.

Adding one: a package ``algos/<name>/`` whose ``__init__`` calls ``register(Algorithm(...))``; it is
found on the first lookup. See ``base.py`` for what an agent and a policy must offer.
"""
from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from typing import Any, Callable

from user_common.features import Features

from .base import Agent, AlgoConfig, Policy

__all__ = ["Algorithm", "AlgoConfig", "Agent", "Policy", "UnknownAlgorithm", "register", "get_algorithm",
           "algorithm_names"]


class UnknownAlgorithm(KeyError):
    """No algorithm of that name; the message lists the registered ones."""

    def __str__(self) -> str:
        return str(self.args[0])


@dataclasses.dataclass(frozen=True)
class Algorithm:
    name: str
    config: type[AlgoConfig]                      # its hyper-parameters (the learning config's ``algo:``)
    agent: Callable[[Features, Any], Agent]        # (spec, config) -> the learner side
    policy: Callable[[Features, Any], Policy]      # (spec, config) -> the inference side
    needs_demos: bool = False                     # learns from demonstrations (replay.demo_ratio > 0)
    batch_extras: tuple[str, ...] = ()            # batch keys it needs besides the usual (features.EXTRA_KEYS)
    learns: bool = True                           # False: inference only (a fixed model, no agent)
    summary: str = ""


_registry: dict[str, Algorithm] = {}


def register(algorithm: Algorithm) -> Algorithm:
    """Make ``algorithm`` available under its name (once)."""
    known = _registry.get(algorithm.name)
    if known is not None and known is not algorithm:
        raise ValueError(f"algorithm {algorithm.name!r} is registered twice")
    _registry[algorithm.name] = algorithm
    return algorithm


def _discover() -> None:
    for module in pkgutil.iter_modules(__path__):
        if module.ispkg:
            importlib.import_module(f"{__name__}.{module.name}")


def algorithm_names() -> list[str]:
    _discover()
    return sorted(_registry)


def get_algorithm(name: str) -> Algorithm:
    """The algorithm registered as ``name``; :class:`UnknownAlgorithm` lists the registered ones."""
    _discover()
    try:
        return _registry[name]
    except KeyError:
        raise UnknownAlgorithm(f"unknown algorithm {name!r}; registered: {', '.join(sorted(_registry))}") from None
