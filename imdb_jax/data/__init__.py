"""Reviews become rows: reading IMDb, tokenising, the vocabulary, n-gram features, CSR matrices
and their cache. NumPy and SciPy only: nothing here imports JAX."""
