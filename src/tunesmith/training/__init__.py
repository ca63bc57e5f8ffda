"""Training: the run (run), the loop (loop), checkpoints, and defaults chosen from the data."""
