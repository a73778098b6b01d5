"""Test support for USER: stand-ins that speak the real names and types of what cannot be installed here
(``franka_ros2_standin``) and fault injection (``faults``). Nothing in production imports this package."""
