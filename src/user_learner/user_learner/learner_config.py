"""The learning configuration: observation layout, the algorithm and its hyper-parameters, the
learner's schedule and the replay.

One YAML file (``config/sac_peg.yaml``, ``config/sac_peg_cnn.yaml``...) is read by both the learner
and the inference node, so the networks on both sides are built alike. ``algo.name`` picks the
algorithm (``algos/``), whose config dataclass reads the rest of ``algo:``. Validated at load: a bad
value raises ``ConfigError`` naming the file and the dotted key.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Literal

from user_common.embodiments import EmbodimentLayout, EmbodimentMap
from user_common.features import Features
from user_common.config_schema import ConfigError, apply_overrides, load_dataclass, non_negative, positive, read_yaml

from .algos import AlgoConfig, UnknownAlgorithm, get_algorithm



class StateNormalizer:
    """``(state - offset) / scale``, the same on the learner and the inference side."""

    def __init__(self, offset: list[float], scale: list[float]) -> None:
        import numpy as np

        self.offset = np.asarray(offset, np.float32) if offset else None
        self.inv_scale = (1.0 / np.asarray(scale, np.float32)) if scale else None

    def __call__(self, state):
        if self.offset is not None:
            state = state - self.offset
        if self.inv_scale is not None:
            state = state * self.inv_scale
        return state.astype("float32", copy=False)


@dataclasses.dataclass
class ObsConfig:
    """What the policy sees; must match the robots' RobotDescription (proprio layout, cameras).

    One embodiment: ``state_dim`` and ``state_offset``/``state_scale``. Several (one policy, several bodies,
    docs/embodiments.md): ``embodiments`` names each one's proprio layout and normalization instead, and the
    policy input is derived from them.
    """

    state_dim: int | None = dataclasses.field(default=None, metadata={"check": (lambda v: v is None or v > 0,
                                                                                 "must be > 0")})
    cameras: list[str] = dataclasses.field(default_factory=list)   # [] -> state-only policy
    image_size: tuple[int, int] = (128, 128)                       # width, height
    action_dim: int = dataclasses.field(default=7, metadata=positive())
    # The policy sees (proprio - state_offset) / state_scale: metres, newtons and radians brought to
    # similar ranges. Empty lists mean no normalization.
    state_offset: list[float] = dataclasses.field(default_factory=list)
    state_scale: list[float] = dataclasses.field(default_factory=list)
    # embodiment name (RobotDescription.embodiment) -> its proprio names, state_offset and state_scale
    embodiments: dict[str, EmbodimentLayout] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.state_dim is None and not self.embodiments:
            self.state_dim = 20   # the Franka's proprio

    def validate(self) -> None:
        if self.embodiments:
            for name in ("state_dim", "state_offset", "state_scale"):
                if getattr(self, name):
                    raise ValueError(f"{name}: not with embodiments (each embodiment names its proprio and "
                                     f"normalization; the policy input is derived from them)")
            try:
                EmbodimentMap(self.embodiments)
            except ValueError as exc:
                raise ValueError(f"embodiments.{exc}") from None
            return
        for name in ("state_offset", "state_scale"):
            v = getattr(self, name)
            if v and len(v) != self.state_dim:
                raise ValueError(f"{name}: has {len(v)} values, state_dim is {self.state_dim}")
        if any(x <= 0 for x in self.state_scale):
            raise ValueError(f"state_scale: must be > 0, got {self.state_scale}")

    def embodiment_map(self) -> EmbodimentMap | None:
        """The mapping of several embodiments onto one policy input (None for a one-embodiment config)."""
        return EmbodimentMap(self.embodiments) if self.embodiments else None

    def normalizer(self) -> "StateNormalizer":
        if self.embodiments:
            raise ValueError("obs: this config normalizes per embodiment (obs.embodiments): use embodiment_map()")
        return StateNormalizer(self.state_offset, self.state_scale)

    def spec(self) -> Features:
        state_dim = EmbodimentMap(self.embodiments).input_dim if self.embodiments else self.state_dim
        return Features(state_dim=state_dim, cameras=tuple(self.cameras), image_size=tuple(self.image_size),
                       action_dim=self.action_dim)


@dataclasses.dataclass
class LearnerOptions:
    """When and how much the learner trains, publishes and checkpoints."""

    mode: Literal["async", "sync"] = "async"
    min_buffer: int = dataclasses.field(default=500, metadata=non_negative())   # transitions before training
    max_utd: float = dataclasses.field(default=0.0, metadata=non_negative())    # updates per env step cap; 0 = none
    sync_updates_per_episode: int = dataclasses.field(default=200, metadata=positive())  # sync mode: K
    publish_every_updates: int = dataclasses.field(default=50, metadata=positive())
    publish_every_s: float = dataclasses.field(default=2.0, metadata=positive())
    checkpoint_every_updates: int = dataclasses.field(default=1000, metadata=positive())
    keep_checkpoints: int = dataclasses.field(default=3, metadata=positive())
    checkpoint_replay: bool = True      # replay.kind memory: put the replay contents in checkpoints
    replay_capacity: int = dataclasses.field(default=100_000, metadata=positive())  # replay.kind memory
    max_env_steps: int = dataclasses.field(default=0, metadata=non_negative())  # budget; 0 = none
    max_minutes: float = dataclasses.field(default=0.0, metadata=non_negative())
    torch_threads: int = dataclasses.field(default=1, metadata=positive())
    log_every_s: float = dataclasses.field(default=5.0, metadata=positive())


@dataclasses.dataclass
class ReplayConfig:
    """Where the learner keeps transitions: ``bag`` (persistent MCAP buffer), ``memory`` (RAM) or
    ``remote`` (a buffer node records them and serves batches)."""

    kind: Literal["bag", "memory", "remote"] = "bag"
    dir: str = ""                       # "" -> <runs_dir>/<run_name>/replay
    cache_mb: float = dataclasses.field(default=1024.0, metadata=non_negative())  # decoded RAM cache
    window: int = dataclasses.field(default=0, metadata=non_negative())   # 0: uniform over all data
    demo_dir: str = ""                  # a bag of demonstrations (RLPD), opened read-only
    demo_ratio: float = dataclasses.field(default=0.0, metadata=non_negative())  # share of each batch
    # HG-DAgger's aggregated dataset: human-controlled steps also go to a bag of their own
    # (interventions_dir, "" -> <runs_dir>/<run_name>/interventions) and the non-demo share of each batch
    # is drawn from it (kind bag only)
    interventions: bool = False
    interventions_dir: str = ""
    robots: list[str] = dataclasses.field(default_factory=list)         # sample only these ([] = all)
    embodiments: list[str] = dataclasses.field(default_factory=list)
    prefetch: int = dataclasses.field(default=2, metadata=non_negative())  # batches prepared ahead
    readers: int = dataclasses.field(default=2, metadata=non_negative())   # disk reader threads
    sync_every_s: float = dataclasses.field(default=1.0, metadata=positive())  # fsync + ack period
    split_mb: float = dataclasses.field(default=512.0, metadata=positive())    # start a new file
    chunk_mb: float = dataclasses.field(default=0.125, metadata=positive())  # uncompressed bytes per chunk
    compression: Literal["zstd", "lz4", "none"] = "zstd"   # MCAP chunk compression (lossless)

    def validate(self) -> None:
        if self.demo_ratio > 1.0:
            raise ValueError(f"demo_ratio: must be in [0, 1], got {self.demo_ratio}")
        if self.demo_ratio > 0 and not self.demo_dir and self.kind != "remote":   # remote: the buffer node's
            raise ValueError("demo_ratio: > 0 needs demo_dir (a bag of demonstrations)")
        if self.interventions and self.kind != "bag":
            raise ValueError(f"interventions: the intervention bag needs kind bag, got kind {self.kind!r}")


@dataclasses.dataclass
class _Sections:
    """The sections every learning config has, whatever the algorithm."""

    obs: ObsConfig = dataclasses.field(default_factory=ObsConfig)
    learner: LearnerOptions = dataclasses.field(default_factory=LearnerOptions)
    replay: ReplayConfig = dataclasses.field(default_factory=ReplayConfig)


@dataclasses.dataclass
class LearnerConfig:
    obs: ObsConfig
    learner: LearnerOptions
    replay: ReplayConfig
    algo_name: str                # the registered algorithm (``algo.name``)
    algo: AlgoConfig              # its config dataclass (the rest of ``algo:``)
    source: str = "<defaults>"


def load_learner_config(path: str | Path, overrides: dict[str, Any] | None = None) -> LearnerConfig:
    """Load and validate a learning configuration file; ``overrides`` use dotted keys (``algo.seed``)."""
    source = str(path)
    data = read_yaml(path)
    if overrides:
        data = apply_overrides(data, overrides)
    if "sac" in data:
        raise ConfigError(source, "sac", "the algorithm's settings moved under algo: (algo: {name: sac, ...})")
    algo = data.pop("algo", None)
    algo = {} if algo is None else algo
    if not isinstance(algo, dict):
        raise ConfigError(source, "algo", f"expected a mapping with a name, got {type(algo).__name__} {algo!r}")
    algo = dict(algo)
    name = algo.pop("name", "sac")
    try:
        algorithm = get_algorithm(str(name))
    except UnknownAlgorithm as exc:
        raise ConfigError(source, "algo.name", str(exc)) from None
    algo_cfg = load_dataclass(algorithm.config, algo, source, "algo")
    sections = load_dataclass(_Sections, data, source)
    if algorithm.needs_demos and sections.replay.demo_ratio <= 0:
        raise ConfigError(source, "replay.demo_ratio", f"algo {algorithm.name} learns from demonstrations: set "
                                                       f"replay.demo_dir (a bag recorded with record:=true) and "
                                                       f"replay.demo_ratio (0.5)")
    if sections.learner.mode == "sync" and sections.replay.kind == "remote":
        raise ConfigError(source, "replay.kind", "remote needs learner.mode async (in sync mode the learner "
                                                 "resets robots when their transitions reach it)")
    return LearnerConfig(sections.obs, sections.learner, sections.replay, algorithm.name, algo_cfg, source)
