"""Simulated robots (MuJoCo)."""
