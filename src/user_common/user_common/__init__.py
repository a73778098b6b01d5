"""What every USER package shares and depends on none of them: the feature schema (``features``)."""
