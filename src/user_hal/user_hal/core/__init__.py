"""Pure cores of the HAL: plain Python, no ROS, no threads, no clock (time comes in with events)."""
