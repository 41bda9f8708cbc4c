"""Rows become logits: the batch types, the layers, the `MLP` and the fused `FusedMLP`, and how
variants are laid out side by side."""
