"""The built-in trainer and the machinery user code shares with it: Ray Train driver, models,
datasets, checkpoints, progress reporting and artifact publication."""
