"""USER replay buffer: persistent MCAP store, index, cache and sampling (see issue 4)."""
