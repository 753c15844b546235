"""Training stages, engine, distributed set-up and checkpoints."""
