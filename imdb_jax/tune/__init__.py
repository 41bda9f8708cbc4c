"""`tune`: the most accurate model the package makes in a few minutes: the search space and its
fused runs, the report, and the run that retrains the choice and scores the test set once."""
