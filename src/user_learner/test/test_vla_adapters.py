"""The real-VLA adapters load only when their package and weights are here; otherwise one clear error
names what is missing, and the loading tests skip with the reason printed."""
from __future__ import annotations

import os

import numpy as np
import pytest

from user_common.features import Features
from user_learner.vla.adapters import AdapterUnavailable, OpenPIPolicy, SmolVLAPolicy, missing_for

SPEC = Features(state_dim=27, action_dim=7, cameras=("wrist", "side"))
KEYS = {"wrist": "observation/wrist_image", "side": "observation/image"}


def test_a_missing_package_or_checkpoint_is_one_clear_error(tmp_path):
    nowhere = tmp_path / "none"
    for make, kind in ((lambda: OpenPIPolicy(SPEC, "pi0_fr3", nowhere, KEYS), "openpi"),
                       (lambda: SmolVLAPolicy(SPEC, nowhere, KEYS), "smolvla")):
        with pytest.raises(AdapterUnavailable) as err:
            make()
        text = str(err.value)
        assert text.startswith(f"{kind} adapter cannot load: missing ") and f"{nowhere} does not exist" in text
        assert (kind in text) == bool([m for m in missing_for(kind, nowhere) if "package" in m])
    with pytest.raises(ValueError, match="must be openpi or smolvla"):
        missing_for("octo", None)


@pytest.mark.parametrize("kind, env", [("openpi", "USER_OPENPI_CHECKPOINT"), ("smolvla", "USER_SMOLVLA_CHECKPOINT")])
def test_the_adapter_acts_in_chunks(kind, env):
    weights = os.environ.get(env)
    missing = missing_for(kind, weights)
    if missing:
        reason = f"{kind}: missing {'; '.join(missing)} (set {env} to a checkpoint directory)"
        print(f"SKIP {reason}")
        pytest.skip(reason)
    if kind == "openpi":
        policy = OpenPIPolicy(SPEC, os.environ.get("USER_OPENPI_CONFIG", "pi0_fr3"), weights, KEYS)
    else:
        policy = SmolVLAPolicy(SPEC, weights, {c: f"observation.images.{c}" for c in SPEC.cameras})
    pixels = np.zeros((2, 128, 128, 3), np.uint8)
    chunk = policy.act(np.zeros(27, np.float32), pixels, True, instruction="put the cube in the right bin")
    assert chunk.shape == (policy.chunk_size, 7) and np.all(np.abs(chunk) <= 1.0)


def test_the_shipped_adapter_config_loads_and_its_policy_says_what_is_missing():
    from pathlib import Path

    from user_learner.algos import get_algorithm
    from user_learner.learner_config import load_learner_config

    cfg = load_learner_config(Path(__file__).resolve().parents[3] / "config" / "vla_pi0.yaml")
    algo = get_algorithm(cfg.algo_name)
    assert cfg.algo_name == "vla_adapter" and not algo.learns and cfg.algo.image_keys["wrist"]
    with pytest.raises(AdapterUnavailable, match="openpi adapter cannot load: missing .*checkpoints/pi0_fr3_pick"):
        algo.policy(cfg.obs.spec(), cfg.algo)
    with pytest.raises(ValueError, match="--skip user/learner"):
        algo.agent(cfg.obs.spec(), cfg.algo)
