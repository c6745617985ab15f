"""Training utilities: distributed helpers, logging, checkpoints, FLOPs."""
