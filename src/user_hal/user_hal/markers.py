"""rviz markers of a robot cell: the task target, the TCP, the task's tracked point (peg tip, cube) and
the safety box."""
from __future__ import annotations

import itertools

import numpy as np
from geometry_msgs.msg import Point
from visualization_msgs.msg import Marker, MarkerArray

from .backends.base import RobotState


def _marker(mid: int, ns: str, kind: int, frame: str, stamp, rgba: tuple[float, float, float, float]) -> Marker:
    m = Marker()
    m.header.frame_id, m.header.stamp = frame, stamp
    m.ns, m.id, m.type, m.action = ns, mid, kind, Marker.ADD
    m.pose.orientation.w = 1.0
    m.color.r, m.color.g, m.color.b, m.color.a = rgba
    return m


def _sphere(mid: int, ns: str, pos: np.ndarray, size: float, frame: str, stamp, rgba) -> Marker:
    m = _marker(mid, ns, Marker.SPHERE, frame, stamp, rgba)
    m.pose.position.x, m.pose.position.y, m.pose.position.z = (float(v) for v in pos)
    m.scale.x = m.scale.y = m.scale.z = size
    return m


def _box_edges(lo: np.ndarray, hi: np.ndarray) -> list[Point]:
    corners = {c: np.where(np.array(c, dtype=bool), hi, lo) for c in itertools.product((0, 1), repeat=3)}
    points = []
    for a, b in itertools.combinations(corners, 2):
        if sum(x != y for x, y in zip(a, b)) == 1:  # corners that differ in one axis share an edge
            for c in (a, b):
                points.append(Point(x=float(corners[c][0]), y=float(corners[c][1]), z=float(corners[c][2])))
    return points


def cell_markers(cell, state: RobotState, stamp, frame: str) -> MarkerArray:
    """Markers for one control step of ``cell`` (a ``RobotCell``)."""
    outcome = cell.task.evaluate(state)
    tip = cell.task.tracked_point(state)
    arr = MarkerArray()
    arr.markers.append(_sphere(0, "target", cell.task.target, 2 * cell.task.target_radius,
                               frame, stamp, (0.1, 0.9, 0.1, 0.5)))
    arr.markers.append(_sphere(1, "tcp", state.tcp_pos, 0.015, frame, stamp, (0.2, 0.4, 1.0, 0.9)))
    tip_color = (0.1, 0.9, 0.1, 1.0) if outcome.success else (1.0, 0.3, 0.1, 1.0)
    arr.markers.append(_sphere(2, "peg_tip", tip, 0.01, frame, stamp, tip_color))
    box = _marker(3, "safety_box", Marker.LINE_LIST, frame, stamp, (1.0, 0.8, 0.0, 0.6))
    box.scale.x = 0.002
    box.points = _box_edges(cell.box_lo, cell.box_hi)
    arr.markers.append(box)
    return arr
