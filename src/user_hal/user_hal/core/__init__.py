"""Pure cores of the HAL: plain Python, no ROS, no threads, no clock (time comes in with events).

``episode`` (the episode controller), ``cell`` (control-step semantics and safety limits), ``chunks``
(action chunks), ``outbox`` (unacknowledged transitions), ``geometry`` (quaternions).
"""
