"""jaxdiv.train: sharded training and distillation (mesh, steps, checkpoints, CLI); see API.md §4."""
