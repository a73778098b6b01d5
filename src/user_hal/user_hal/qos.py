"""QoS profiles of USER's topics, in one place so publishers and subscribers always match."""
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

#: Announcements a late joiner must still get: robot descriptions, heartbeats, robot_description.
LATCHED = QoSProfile(depth=1, history=HistoryPolicy.KEEP_LAST, reliability=ReliabilityPolicy.RELIABLE,
                     durability=DurabilityPolicy.TRANSIENT_LOCAL)
#: Control traffic: observations and actions. Only the newest matters.
CONTROL = QoSProfile(depth=2, history=HistoryPolicy.KEEP_LAST, reliability=ReliabilityPolicy.RELIABLE,
                     durability=DurabilityPolicy.VOLATILE)
#: Data that must not be dropped while the receiver keeps up: transitions, episode summaries.
DATA = QoSProfile(depth=200, history=HistoryPolicy.KEEP_LAST, reliability=ReliabilityPolicy.RELIABLE,
                  durability=DurabilityPolicy.VOLATILE)
#: Sensor streams for humans and rviz (cameras, joint states, markers).
SENSOR = QoSProfile(depth=2, history=HistoryPolicy.KEEP_LAST, reliability=ReliabilityPolicy.RELIABLE,
                    durability=DurabilityPolicy.VOLATILE)

DESCRIPTION_TOPIC = "/user/robots/description"
HEARTBEAT_TOPIC = "/user/robots/heartbeat"
EPISODES_TOPIC = "/user/episodes"
TRANSITIONS_TOPIC = "/user/transitions"
LIST_ROBOTS_SERVICE = "/user/list_robots"


def robot_topic(robot_id: str, name: str) -> str:
    """Absolute per-robot topic name, e.g. ``/franka_0/observation``."""
    return f"/{robot_id}/{name}"


def camera_topic(robot_id: str, camera: str) -> str:
    """realsense2_camera-style image topic of one camera of a robot."""
    return f"/{robot_id}/camera/{camera}/color/image_raw"
