"""The shipped rviz config shows exactly the topics a robot node publishes."""
from pathlib import Path

import yaml

from user_common import qos

RVIZ = Path(__file__).resolve().parents[1] / "rviz" / "franka.rviz"


def _topics(node) -> list[str]:
    found = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("Topic", "Description Topic") and isinstance(value, dict):
                found.append(value["Value"])
            else:
                found += _topics(value)
    elif isinstance(node, list):
        for item in node:
            found += _topics(item)
    return found


def test_rviz_config_topics_match_the_robot_node():
    cfg = yaml.safe_load(RVIZ.read_text())
    topics = set(_topics(cfg))
    expected = {
        qos.robot_topic("franka_0", "robot_description"),
        qos.robot_topic("franka_0", "markers"),
        qos.camera_topic("franka_0", "wrist"),
        qos.camera_topic("franka_0", "side"),
    }
    assert topics == expected, f"rviz shows {sorted(topics)}, robot node publishes {sorted(expected)}"
    assert cfg["Visualization Manager"]["Global Options"]["Fixed Frame"] == "base"
