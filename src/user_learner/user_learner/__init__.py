"""USER learning: policies, algorithms, inference and learner nodes (see issue 3)."""
