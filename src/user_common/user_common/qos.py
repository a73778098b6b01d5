"""QoS profiles of USER's topics, in one place so publishers and subscribers always match."""
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

from .topics import (BINDINGS_TOPIC, CAPACITY_TOPIC, DESCRIPTION_TOPIC, EPISODES_TOPIC,  # noqa: F401
                     HEARTBEAT_TOPIC, JOBS_TOPIC, LIST_ROBOTS_SERVICE, POLICY_STATUS_TOPIC,
                     TRANSITION_ACK_TOPIC, TRANSITIONS_TOPIC, WEIGHTS_TOPIC, camera_topic, robot_topic)

#: Announcements a late joiner must still get: robot descriptions, heartbeats, robot_description.
LATCHED = QoSProfile(depth=1, history=HistoryPolicy.KEEP_LAST, reliability=ReliabilityPolicy.RELIABLE,
                     durability=DurabilityPolicy.TRANSIENT_LOCAL)
#: Readers of the robots' announcements (descriptions, heartbeats): reliable + transient-local like
#: the publishers, with a deeper queue so a burst of late-joined samples from many robots is not
#: collapsed to one.
ANNOUNCEMENTS_IN = QoSProfile(depth=100, history=HistoryPolicy.KEEP_LAST, reliability=ReliabilityPolicy.RELIABLE,
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
#: What a consumer of /user/transitions buffers while it is busy (a learner between updates).
TRANSITIONS_IN = QoSProfile(depth=1000, history=HistoryPolicy.KEEP_LAST, reliability=ReliabilityPolicy.RELIABLE,
                            durability=DurabilityPolicy.VOLATILE)
