"""The link configuration: config/link.yaml, the default allow-list (what crosses and what stays), bad input."""
from __future__ import annotations

from pathlib import Path

import pytest
from link_helpers import LINK_YAML

from user_common.config_schema import ConfigError
from user_common.topics import (DESCRIPTION_TOPIC, EPISODES_TOPIC, HEARTBEAT_TOPIC, JOB_TOPICS, TRANSITION_ACK_TOPIC,
                                TRANSITIONS_TOPIC, WEIGHTS_TOPIC, camera_topic, job_topic, robot_topic)
from user_link.config import DEFAULT_DOWN, DEFAULT_UP, LinkConfig, load_link_config
from user_link.wire import pattern_matches


def crosses(cfg: LinkConfig, topic: str) -> str | None:
    """'up', 'down' or None: where ``topic`` goes under ``cfg``'s allow-list."""
    up = any(pattern_matches(p, topic) for p in cfg.up)
    down = any(pattern_matches(p, topic) for p in cfg.down)
    assert not (up and down), topic
    return "up" if up else "down" if down else None


def test_default_file_loads_and_holds_the_default_allow_list() -> None:
    cfg = load_link_config(LINK_YAML)
    assert cfg.role == "edge" and cfg.endpoints == ["tls/localhost:7447"] and cfg.namespace == ""
    assert cfg.up == list(DEFAULT_UP) and cfg.down == list(DEFAULT_DOWN)
    assert cfg.up == list(LinkConfig().up) and cfg.down == list(LinkConfig().down)


@pytest.mark.parametrize("ns", ["", "/user/jobs/peg", "/user/jobs/pick_2"])
def test_what_learning_needs_crosses_in_its_direction(ns: str) -> None:
    cfg = load_link_config(LINK_YAML)
    for topic in (TRANSITIONS_TOPIC, EPISODES_TOPIC):
        assert crosses(cfg, job_topic(topic, ns)) == "up", job_topic(topic, ns)
    for topic in (WEIGHTS_TOPIC, TRANSITION_ACK_TOPIC):
        assert crosses(cfg, job_topic(topic, ns)) == "down", job_topic(topic, ns)
    assert crosses(cfg, DESCRIPTION_TOPIC) == crosses(cfg, HEARTBEAT_TOPIC) == "up"


def test_raw_sensor_streams_observations_and_actions_stay_at_the_edge() -> None:
    cfg = load_link_config(LINK_YAML)
    stay = ["/joint_states", "/tf", "/tf_static", "/rosout", "/parameter_events", "/user/buffer/sample",
            "/user/inference/status", "/user/jobs/peg/inference/status"]
    for rid in ("franka_0", "wxai_3", "robot"):
        stay += [robot_topic(rid, n) for n in ("observation", "action", "joint_states", "markers",
                                               "robot_description", "reward_label")]
        stay += [camera_topic(rid, cam) for cam in ("wrist", "side", "front")]
    leaked = [t for t in stay if crosses(cfg, t)]
    assert leaked == []
    # job namespaces only carry what the shared names carry
    assert crosses(cfg, "/user/jobs/peg/buffer/sample") is None and "/user/buffer/sample" in JOB_TOPICS


@pytest.mark.parametrize("overrides, words", [
    ({"colour": "red"}, "colour: unknown key (known: "),
    ({"tls.pem": "x"}, "tls.pem: unknown key (known: ca, cert, key)"),
    ({"role": "server"}, "role: must be one of 'edge', 'cloud', got 'server'"),
    ({"endpoints": ["tcp/localhost:7447"]}, "endpoints[0]: 'tcp/localhost:7447' is not tls/<host>:<port>"),
    ({"endpoints": ["tls/localhost:99999"]}, "endpoints[0]: 'tls/localhost:99999': port 99999 is outside"),
    ({"endpoints": []}, "endpoints: at least one tls/<host>:<port> is needed"),
    ({"connect_timeout_s": 0}, "connect_timeout_s: must be > 0"),
    ({"tls.key": ""}, "tls.key: required: a PEM file path"),
    ({"namespace": "site 1"}, "namespace: namespace 'site 1': expected ''"),
    ({"up": ["/user/transitions", "user/episodes"]}, "up[1]: topic pattern 'user/episodes': expected an absolute"),
    ({"down": ["/user/policy/weights", "/user/policy/weights"]}, "down: repeated entries"),
    ({"up": ["/user/**"]}, "down: '/user/policy/weights' and up: '/user/**' match the same topics"),
    ({"role": "cloud", "edges": {}}, "edges: a cloud needs at least one edge"),
    ({"edges": {"site 1": {"robots": []}}}, "edges.site 1: edge name 'site 1'"),
    ({"edges": {"a": {"robots": ["franka-0"]}}}, "edges.a.robots[0]: 'franka-0' is not a robot id"),
    ({"edges": {"a": {"robots": ["r"]}, "b": {"robots": ["r"]}}}, "edges.b.robots: 'r' is already a robot of edge"),
    ({"edges": {"a": {"robot": ["r"]}}}, "edges.a.robot: unknown key (known: robots)"),
])
def test_bad_configuration_is_one_clear_error(overrides: dict, words: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_link_config(LINK_YAML, overrides)
    assert str(err.value).startswith(f"{LINK_YAML}: ") and words in str(err.value), str(err.value)


def test_missing_or_non_pem_tls_files_are_named(tmp_path: Path) -> None:
    cfg = load_link_config(LINK_YAML, {"tls": {"ca": str(tmp_path / "nope.pem"), "cert": str(LINK_YAML),
                                               "key": str(LINK_YAML)}})
    with pytest.raises(ConfigError, match=r"tls\.ca: cannot read .*nope\.pem: No such file"):
        cfg.check_files()
    (tmp_path / "nope.pem").write_text("-----BEGIN CERTIFICATE-----\n")
    with pytest.raises(ConfigError, match=r"tls\.cert: .*link\.yaml is not a PEM file"):
        cfg.check_files()
