"""The training engine: the one loop, evaluation, checkpoints and progress."""
