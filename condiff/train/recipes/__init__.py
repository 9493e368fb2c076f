"""Training recipes of condiff's built-in models (run on a GPU machine; see docs/training_log.md)."""
