"""The simulated WidowX AI behind the unchanged robot node: one scripted peg-insertion episode over DDS."""
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from user_msgs.msg import EpisodeStats, Observation, RobotDescription

from hal_helpers import ROOT, Collect, node_cmd, profile_with

LATCHED = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
WXAI_PROFILE = ROOT / "config" / "robot_wxai.yaml"


def test_scripted_policy_inserts_the_peg_with_the_widowx_through_the_robot_node(procs, ros_node, tmp_path):
    episodes = Collect(ros_node, EpisodeStats, "/user/episodes")
    obs = Collect(ros_node, Observation, "/wxai_0/observation")
    desc = Collect(ros_node, RobotDescription, "/user/robots/description", LATCHED)
    prof = profile_with(tmp_path, base=WXAI_PROFILE, **{"robot.cameras": ["wrist"]})
    robot = procs.start("robot", node_cmd("robot_node", {
        "robot_id": "wxai_0", "profile": str(prof), "realtime_factor": 0.0, "max_episodes": 1}))
    episodes.wait_matched(60)
    procs.start("policy", node_cmd("scripted_policy", {"robot_id": "wxai_0", "profile": str(prof)}))
    episodes.wait(lambda m: len(m) >= 1, 60, "an episode")
    assert robot.popen.wait(timeout=20) == 0, robot.output()[-2000:]
    (e,) = episodes.msgs
    assert e.robot_id == "wxai_0" and e.success, (e.success, e.steps)
    d = desc.wait(lambda m: len(m) > 0, 10, "the robot description")
    assert (d.embodiment, d.backend, d.dof, len(d.joint_names)) == ("wxai", "wxai_sim", 6, 8)
    assert len(d.action_names) == 7 and len(d.proprio_names) == 14 and "force_z" not in d.proprio_names
    assert [c.name for c in d.cameras] == ["wrist"]
    o = obs.msgs[-1]
    assert len(o.proprio) == 14, "the WidowX's observations carry its own proprio layout"
    assert [img.width for img in o.images] == [128], "the wrist camera's frames travel in the observation"
