"""Adapters that make real VLAs act through the project's ``Policy`` protocol (``algos/base.py``):
pi0 / pi0.5 through openpi, SmolVLA through LeRobot. Their packages and weights are large and mostly
need a GPU, so nothing is imported until an adapter is built, and building one without them raises
:class:`AdapterUnavailable` naming everything missing (package, weights) in one message.

Both take the robot's images (uint8 ``[n, H, W, 3]``, cameras in ``Features.cameras`` order), its proprio
and the instruction, and return the model's action chunk ``[H, A]`` clipped to ``[-1, 1]``; the model must
have been trained (fine-tuned) for this robot's action space (7 values: TCP delta + gripper, see
docs/tasks.md): an adapter checks the action width and refuses another. The state reaches the model as the
inference node passes it, so a learning config for an adapter leaves ``obs.state_offset/state_scale``
empty (the models normalize with their own statistics). They do not learn here: ``load_policy_state_dict``
accepts only an empty update.
"""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from user_common.features import Features

__all__ = ["AdapterUnavailable", "OpenPIPolicy", "SmolVLAPolicy", "missing_for"]


class AdapterUnavailable(RuntimeError):
    """A real-VLA adapter cannot load here; the message says what is missing."""


def _importable(module: str) -> bool:
    try:
        importlib.import_module(module)
        return True
    except ImportError:
        return False


def missing_for(kind: str, weights: str | Path | None) -> list[str]:
    """What adapter ``kind`` (``openpi`` or ``smolvla``) lacks on this machine ([] = it can load)."""
    missing = []
    if kind == "openpi":
        if not _importable("openpi"):
            missing.append("the Python package openpi (github.com/Physical-Intelligence/openpi)")
    elif kind == "smolvla":
        if not (_importable("lerobot.policies.smolvla.modeling_smolvla")
                or _importable("lerobot.common.policies.smolvla.modeling_smolvla")):
            missing.append("the Python package lerobot with SmolVLA (pip install 'lerobot[smolvla]')")
    else:
        raise ValueError(f"adapter: must be openpi or smolvla, got {kind!r}")
    if not weights:
        missing.append("the weights (no checkpoint directory given)")
    elif not Path(weights).is_dir():
        missing.append(f"the weights (checkpoint directory {weights} does not exist)")
    return missing


def _check_available(kind: str, weights: str | Path | None) -> None:
    missing = missing_for(kind, weights)
    if missing:
        raise AdapterUnavailable(f"{kind} adapter cannot load: missing {'; '.join(missing)}")


class _Adapter:
    uses_instruction = True
    chunk_size: int

    def __init__(self, spec: Features, instruction: str) -> None:
        self.spec = spec
        self.instruction = instruction

    def load_policy_state_dict(self, d: Mapping[str, Any]) -> None:
        """Adapters serve fixed weights: only an empty update is accepted."""
        if d:
            raise ValueError(f"policy state dict: this adapter serves fixed weights, unexpected keys "
                             f"{sorted(d)[:5]}")

    def _finish(self, actions: np.ndarray) -> np.ndarray:
        actions = np.asarray(actions, np.float32)
        if actions.ndim == 1:
            actions = actions[None]
        if actions.shape[-1] != self.spec.action_dim:
            raise ValueError(f"the model outputs {actions.shape[-1]} action values, the robot takes "
                             f"{self.spec.action_dim}: fine-tune it on this robot's action space first")
        return np.clip(actions, -1.0, 1.0)


class OpenPIPolicy(_Adapter):
    """pi0 / pi0.5 through openpi: ``config_name`` (an openpi training config, e.g. one fine-tuned on this
    robot's data) and its ``checkpoint`` directory. ``image_keys`` maps each camera to the model's input
    key; ``state_key`` and ``prompt_key`` name the proprio and instruction inputs."""

    def __init__(self, spec: Features, config_name: str, checkpoint: str | Path, image_keys: Mapping[str, str],
                 state_key: str = "observation/state", prompt_key: str = "prompt", instruction: str = "") -> None:
        _check_available("openpi", checkpoint)
        super().__init__(spec, instruction)
        unmapped = [c for c in spec.cameras if c not in image_keys]
        if unmapped:
            raise ValueError(f"image_keys: no model input named for cameras {unmapped}")
        from openpi.policies import policy_config
        from openpi.training import config as openpi_config

        cfg = openpi_config.get_config(config_name)
        self.policy = policy_config.create_trained_policy(cfg, str(checkpoint))
        self.chunk_size = int(cfg.model.action_horizon)
        self.image_keys, self.state_key, self.prompt_key = dict(image_keys), state_key, prompt_key

    def act(self, state: np.ndarray, pixels: np.ndarray | None, deterministic: bool, generator=None,
            instruction: str | None = None) -> np.ndarray:
        example: dict[str, Any] = {self.state_key: np.asarray(state, np.float32),
                                   self.prompt_key: instruction or self.instruction}
        for i, cam in enumerate(self.spec.cameras):
            example[self.image_keys[cam]] = np.asarray(pixels[i])
        return self._finish(self.policy.infer(example)["actions"])


class SmolVLAPolicy(_Adapter):
    """SmolVLA through LeRobot, from a local ``checkpoint`` directory (``from_pretrained``); ``image_keys``
    maps each camera to an ``observation.images.*`` feature of the checkpoint."""

    def __init__(self, spec: Features, checkpoint: str | Path, image_keys: Mapping[str, str],
                 device: str = "cuda", instruction: str = "") -> None:
        _check_available("smolvla", checkpoint)
        super().__init__(spec, instruction)
        unmapped = [c for c in spec.cameras if c not in image_keys]
        if unmapped:
            raise ValueError(f"image_keys: no model input named for cameras {unmapped}")
        import torch

        try:
            from lerobot.policies.smolvla.modeling_smolvla import SmolVLAPolicy as LeRobotSmolVLA
        except ImportError:
            from lerobot.common.policies.smolvla.modeling_smolvla import SmolVLAPolicy as LeRobotSmolVLA
        self.torch, self.device = torch, device
        self.policy = LeRobotSmolVLA.from_pretrained(str(checkpoint)).to(device).eval()
        self.chunk_size = int(self.policy.config.chunk_size)
        self.image_keys = dict(image_keys)
        self.pre = self.post = None
        try:   # newer LeRobot keeps the normalization in processors saved beside the weights
            from lerobot.policies.factory import make_pre_post_processors

            self.pre, self.post = make_pre_post_processors(self.policy.config, pretrained_path=str(checkpoint))
        except ImportError:
            pass

    def act(self, state: np.ndarray, pixels: np.ndarray | None, deterministic: bool, generator=None,
            instruction: str | None = None) -> np.ndarray:
        torch = self.torch
        batch: dict[str, Any] = {
            "observation.state": torch.as_tensor(np.asarray(state, np.float32))[None].to(self.device),
            "task": [instruction or self.instruction]}
        for i, cam in enumerate(self.spec.cameras):
            img = torch.as_tensor(np.ascontiguousarray(pixels[i])).permute(2, 0, 1).float() / 255.0
            batch[self.image_keys[cam]] = img[None].to(self.device)
        if self.pre is not None:
            batch = self.pre(batch)
        with torch.no_grad():
            chunk = self.policy.predict_action_chunk(batch)
        if self.post is not None:
            chunk = self.post(chunk)
        return self._finish(chunk[0].float().cpu().numpy())
