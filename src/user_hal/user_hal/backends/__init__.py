"""Robot backends: the simulated arms (MuJoCo), franky (libfranka) and franka_ros2; ``base`` holds the interface
and the registry (``make_backend``)."""
