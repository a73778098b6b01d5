"""Devices around a robot that are not the arm: cameras and teleoperation inputs."""
