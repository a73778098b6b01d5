"""USER bringup: the node graph description, launcher and the userctl CLI."""
