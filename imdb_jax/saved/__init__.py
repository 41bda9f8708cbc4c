"""Runs become folders: saved models and ensembles, loading either, and explaining a saved
model's scores."""
