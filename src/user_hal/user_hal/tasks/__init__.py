"""Tasks: rule rewards and success (``rules``) and the scripted experts that solve them (``experts``)."""
