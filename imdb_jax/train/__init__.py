"""Logits become updates, and updates a run: the optimiser, the pure steps, compiled epochs, the
epoch loop, `fit` and `fit_variants`, checkpoints, devices and processes."""
