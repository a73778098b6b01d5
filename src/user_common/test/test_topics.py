"""Job namespaces: the one naming rule of a job's data-plane topics (docs/scheduler.md)."""
import pytest

from user_common.config_schema import ConfigError
from user_common.topics import (BINDINGS_TOPIC, EPISODES_TOPIC, HEARTBEAT_TOPIC, POLICY_STATUS_TOPIC,
                             TRANSITION_ACK_TOPIC, TRANSITIONS_TOPIC, WEIGHTS_TOPIC, check_topic_ns, job_topic)


def test_an_empty_namespace_keeps_the_shared_names():
    for topic in (TRANSITIONS_TOPIC, TRANSITION_ACK_TOPIC, EPISODES_TOPIC, WEIGHTS_TOPIC, POLICY_STATUS_TOPIC):
        assert job_topic(topic, "") == topic


def test_a_job_namespace_replaces_user():
    ns = "/user/jobs/peg"
    assert [job_topic(t, ns) for t in (TRANSITIONS_TOPIC, TRANSITION_ACK_TOPIC, EPISODES_TOPIC, WEIGHTS_TOPIC,
                                       POLICY_STATUS_TOPIC, "/user/buffer/sample")] == [
        "/user/jobs/peg/transitions", "/user/jobs/peg/transitions/ack", "/user/jobs/peg/episodes",
        "/user/jobs/peg/policy/weights", "/user/jobs/peg/inference/status", "/user/jobs/peg/buffer/sample"]
    assert job_topic(TRANSITIONS_TOPIC, "/lab2") == "/lab2/transitions"


@pytest.mark.parametrize("topic", [HEARTBEAT_TOPIC, BINDINGS_TOPIC, "/user/estop/engaged"])
def test_control_plane_topics_are_not_job_scoped(topic):
    with pytest.raises(ValueError, match="is not a job-scoped topic"):
        job_topic(topic, "/user/jobs/peg")


@pytest.mark.parametrize("ns", ["user/jobs/peg", "/user/jobs/", "/user//peg", "/user/jobs/2peg", "/user/jobs/p-g",
                                "/", " /user"])
def test_a_bad_namespace_is_one_error_naming_the_parameter(ns):
    with pytest.raises(ConfigError, match=r"^<parameters>: topic_ns: .* is not a ROS namespace"):
        check_topic_ns(ns)
    with pytest.raises(ConfigError, match=r"^/user/scheduler/bindings: job x: topic_ns: "):
        check_topic_ns(ns, "job x: topic_ns", "/user/scheduler/bindings")
