"""Names of USER's shared topics and services (plain strings: importable without ROS)."""

DESCRIPTION_TOPIC = "/user/robots/description"
HEARTBEAT_TOPIC = "/user/robots/heartbeat"
EPISODES_TOPIC = "/user/episodes"
TRANSITIONS_TOPIC = "/user/transitions"
TRANSITION_ACK_TOPIC = "/user/transitions/ack"
WEIGHTS_TOPIC = "/user/policy/weights"
POLICY_STATUS_TOPIC = "/user/inference/status"
LIST_ROBOTS_SERVICE = "/user/list_robots"
#: the scheduler's control plane (docs/scheduler.md)
JOBS_TOPIC = "/user/jobs"
CAPACITY_TOPIC = "/user/inference/capacity"
BINDINGS_TOPIC = "/user/scheduler/bindings"
#: e-stop services, served by every robot node (std_srvs/srv/Trigger)
ESTOP_SERVICE = "/user/estop"
ESTOP_RELEASE_SERVICE = "/user/estop_release"
#: e-stop state topic (std_msgs/Bool, latched): true engages, false releases
ESTOP_TOPIC = "/user/estop/engaged"
#: heartbeat message of a robot while the e-stop is engaged
ESTOP_MESSAGE = "e-stop"


def robot_topic(robot_id: str, name: str) -> str:
    """Absolute per-robot topic name, e.g. ``/franka_0/observation``."""
    return f"/{robot_id}/{name}"


def camera_topic(robot_id: str, camera: str) -> str:
    """realsense2_camera-style image topic of one camera of a robot."""
    return f"/{robot_id}/camera/{camera}/color/image_raw"
