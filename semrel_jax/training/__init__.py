"""Training: mesh, optimizer, train step, checkpoints, metric writers."""
