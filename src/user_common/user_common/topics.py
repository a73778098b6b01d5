"""Names of USER's shared topics and services (plain strings: importable without ROS)."""
import re

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


#: A job's data plane (docs/scheduler.md): these live under the job's ``topic_ns``; all others stay global.
JOB_TOPICS = (TRANSITIONS_TOPIC, TRANSITION_ACK_TOPIC, EPISODES_TOPIC, WEIGHTS_TOPIC, POLICY_STATUS_TOPIC,
              "/user/buffer/sample")
_NS_RE = re.compile(r"^(/[A-Za-z_][A-Za-z0-9_]*)+$")


def check_topic_ns(topic_ns: str, param: str = "topic_ns", source: str = "<parameters>") -> str:
    """``topic_ns`` if it is "" or an absolute ROS namespace such as ``/user/jobs/peg``; else a ConfigError
    (a ValueError) naming ``source`` and ``param``."""
    if topic_ns == "" or _NS_RE.match(topic_ns):
        return topic_ns
    from .config_schema import ConfigError
    raise ConfigError(source, param, f"{topic_ns!r} is not a ROS namespace: expected '' (the shared /user topics) "
                                     f"or an absolute namespace of names made of letters, digits and '_' (not "
                                     f"starting with a digit), e.g. /user/jobs/peg")


def job_topic(topic: str, topic_ns: str = "") -> str:
    """Where a job-scoped topic of ``JOB_TOPICS`` lives for a job with namespace ``topic_ns``: "" keeps the
    shared name, else ``/user`` is replaced by the namespace (``/user/jobs/peg`` + ``/user/transitions`` ->
    ``/user/jobs/peg/transitions``)."""
    if topic not in JOB_TOPICS:
        raise ValueError(f"job_topic: {topic!r} is not a job-scoped topic (those are {', '.join(JOB_TOPICS)})")
    check_topic_ns(topic_ns)
    return topic_ns + topic[len("/user"):] if topic_ns else topic
