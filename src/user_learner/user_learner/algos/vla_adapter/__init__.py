"""A real VLA served as the policy: pi0 / pi0.5 through openpi or SmolVLA through LeRobot
(``user_learner.vla.adapters``). Inference only: it does not learn here (``learns=False``), so the graph
runs without the learner (``userctl launch ... --skip user/learner``); the policy is built when the
inference node starts and fails there with one error naming what is missing (package, weights).
"""
from __future__ import annotations

import dataclasses
from typing import Literal

from user_common.features import Features

from .. import Algorithm, AlgoConfig, register

__all__ = ["VLAAdapterConfig", "ALGORITHM"]


@dataclasses.dataclass
class VLAAdapterConfig(AlgoConfig):
    adapter: Literal["openpi", "smolvla"] = "openpi"
    checkpoint: str = ""                     # local directory of the weights (never downloaded here)
    openpi_config: str = ""                  # openpi: the training config's name (e.g. a pi0 fine-tune for this robot)
    image_keys: dict[str, str] = dataclasses.field(default_factory=dict)   # camera -> the model's input key
    state_key: str = "observation/state"     # openpi: the proprio input key
    device: str = "cuda"                     # smolvla: torch device
    instruction: str = ""                    # used when the robot announces none

    def validate(self) -> None:
        super().validate()
        if self.adapter not in ("openpi", "smolvla"):
            raise ValueError(f"adapter: must be openpi or smolvla, got {self.adapter!r}")
        if self.adapter == "openpi" and not self.openpi_config:
            raise ValueError("openpi_config: name the openpi training config of the checkpoint")


def _policy(spec: Features, cfg: VLAAdapterConfig):
    from ...vla.adapters import OpenPIPolicy, SmolVLAPolicy

    cfg.validate()
    if cfg.adapter == "openpi":
        return OpenPIPolicy(spec, cfg.openpi_config, cfg.checkpoint, cfg.image_keys, state_key=cfg.state_key,
                            instruction=cfg.instruction)
    return SmolVLAPolicy(spec, cfg.checkpoint, cfg.image_keys, device=cfg.device, instruction=cfg.instruction)


def _agent(spec: Features, cfg: VLAAdapterConfig):
    raise ValueError(f"algo.name: vla_adapter serves a fixed {cfg.adapter} model and has no learner: launch the "
                     f"graph without it (--skip user/learner)")


ALGORITHM = register(Algorithm("vla_adapter", VLAAdapterConfig, _agent, _policy, learns=False,
                               summary="a real VLA (pi0 / pi0.5 via openpi, SmolVLA via LeRobot), inference only"))
