"""USER link: edge and cloud joined over zenoh (issue 13), wire-compatible with zenoh-bridge-ros2dds."""
