"""The zenoh-bridge-ros2dds wire mapping, pinned with the examples written in src/user_link/README.md."""
from __future__ import annotations

import pytest

from user_link import wire
from user_link.wire import WireError

# (ROS name, namespace, zenoh key): the README's table
EXAMPLES = [
    ("/user/transitions", "", "user/transitions"),
    ("/user/transitions", "site1", "site1/user/transitions"),
    ("/user/transitions", "/site1", "site1/user/transitions"),
    ("/user/jobs/peg/transitions", "", "user/jobs/peg/transitions"),
    ("/franka_0/observation", "/site1/cell2", "site1/cell2/franka_0/observation"),
    ("/chatter", "/", "chatter"),
    ("/user/list_robots", "", "user/list_robots"),
]


@pytest.mark.parametrize("topic, ns, key", EXAMPLES)
def test_topic_and_key_map_both_ways(topic: str, ns: str, key: str) -> None:
    assert wire.topic_to_key(topic, ns) == key
    assert wire.key_to_topic(key, ns) == topic


def test_services_are_queryables_on_the_same_key_and_actions_have_five_routes() -> None:
    assert wire.service_to_key("/user/list_robots") == "user/list_robots"
    assert wire.service_to_key("/franka_0/reset", "site1") == "site1/franka_0/reset"
    assert wire.action_keys("/arm/move", "site1") == {
        "_action/send_goal": "site1/arm/move/_action/send_goal",
        "_action/cancel_goal": "site1/arm/move/_action/cancel_goal",
        "_action/get_result": "site1/arm/move/_action/get_result",
        "_action/feedback": "site1/arm/move/_action/feedback",
        "_action/status": "site1/arm/move/_action/status"}


@pytest.mark.parametrize("name, words", [
    ("user/transitions", "expected an absolute ROS name"),
    ("/", "expected an absolute ROS name"),
    ("", "expected an absolute ROS name"),
    ("/user//transitions", "has an empty token"),
    ("/user/transitions/", "has an empty token"),
    ("/user/1st", "has the invalid token '1st'"),
    ("/user/a-b", "has the invalid token 'a-b'"),
    ("/user/*", "has the invalid token '*'"),
    ("~/private", "expected an absolute ROS name"),
    ("/user/{node}", "has the invalid token '{node}'"),
])
def test_names_that_cannot_map_are_refused(name: str, words: str) -> None:
    with pytest.raises(WireError, match="ROS topic") as err:
        wire.topic_to_key(name)
    assert words in str(err.value)


@pytest.mark.parametrize("key, ns, words", [
    ("user/transitions", "site1", "is not under the namespace 'site1'"),
    ("site10/user/transitions", "site1", "is not under the namespace 'site1'"),
    ("user/*/transitions", "", "is not a ROS name"),
    ("/user/transitions", "", "is not a ROS name"),
    ("site1/", "site1", "is not a ROS name"),
])
def test_keys_that_cannot_map_are_refused(key: str, ns: str, words: str) -> None:
    with pytest.raises(WireError, match="zenoh key") as err:
        wire.key_to_topic(key, ns)
    assert words in str(err.value)


def test_bad_namespace_is_refused() -> None:
    for ns in ("site 1", "/site1/", "1site", "a//b"):
        with pytest.raises(WireError, match="namespace"):
            wire.topic_to_key("/user/transitions", ns)


def test_patterns_match_like_zenoh_key_expressions() -> None:
    assert wire.pattern_to_key_expr("/user/jobs/*/transitions", "site1") == "site1/user/jobs/*/transitions"
    assert wire.pattern_matches("/user/jobs/*/transitions", "/user/jobs/peg/transitions")
    assert not wire.pattern_matches("/user/jobs/*/transitions", "/user/jobs/peg/transitions/ack")
    assert not wire.pattern_matches("/user/jobs/*/transitions", "/user/jobs/a/b/transitions")
    assert wire.pattern_matches("/user/**", "/user") and wire.pattern_matches("/user/**", "/user/a/b")
    assert wire.pattern_matches("/**/ack", "/user/transitions/ack")
    assert wire.patterns_intersect("/user/**", "/user/jobs/*/x")
    assert wire.patterns_intersect("/*/transitions", "/user/*")
    assert not wire.patterns_intersect("/user/jobs/*/transitions", "/user/jobs/*/transitions/ack")
    assert not wire.patterns_intersect("/user/transitions", "/user/episodes")
    with pytest.raises(WireError, match=r"'\*\*/\*\*' is the same as '\*\*'"):
        wire.pattern_to_key_expr("/user/**/**")
    with pytest.raises(WireError, match="invalid token 'a\\*'"):
        wire.pattern_to_key_expr("/user/a*")


def test_payload_is_cdr_with_the_encapsulation_header() -> None:
    from std_msgs.msg import String

    data = wire.encode(String(data="hello"))
    # the bridge's (and DDS's) bytes: CDR_LE header 00 01 00 00, uint32 length 6, "hello", NUL
    assert data == bytes.fromhex("00 01 00 00 06 00 00 00 68 65 6c 6c 6f 00")
    assert wire.encapsulation(data) == "CDR_LE"
    assert wire.decode(data, String) == String(data="hello")


def test_transition_round_trips_to_an_identical_message() -> None:
    pytest.importorskip("user_msgs.msg", reason="user_msgs is not built (run scripts/setup.sh)")
    from link_helpers import sample_transition
    from user_msgs.msg import Transition

    msg = sample_transition()
    data = wire.encode(msg)
    assert data[:4] == b"\x00\x01\x00\x00"
    back = wire.decode(data, Transition)
    assert back == msg and wire.encode(back) == data


def test_bad_payloads_are_refused() -> None:
    from std_msgs.msg import String

    with pytest.raises(WireError, match="shorter than the 4-byte CDR encapsulation header"):
        wire.decode(b"\x00\x01", String)
    with pytest.raises(WireError, match="0x7b22 is not a CDR encapsulation identifier"):
        wire.decode(b'{"data": "hello"}', String)
    with pytest.raises(WireError, match="is not a serialized String"):
        wire.decode(bytes.fromhex("00 01 00 00 ff ff 00 00 68"), String)
