"""The engine: train state, the one training loop, checkpoints, preemption,
progress, logging and results files, shared by every mode."""
