"""USER hardware abstraction layer: robots as schedulable resources."""
