"""The seed's study of overfitting, trained as vmapped runs with several seeds per variant.

Each experiment is a list of `VariantSpec`s (`experiments`). `run_study` (`runner`) trains the
deduplicated union of the chosen experiments, every variant with N seeds, in one `fit_variants`
run by default; summarises each variant over its seeds (`statistics`); decides what each
experiment shows, calling a difference real only when it exceeds the noise between seeds
(`conclusions`); writes study.json, a Markdown report whose sentences are computed from those
conclusions (`report`) and PNG figures of mean curves with min-max bands (`figures`); and
retrains the best variant on all training reviews.

Importing this package does not import JAX; `run_study` does.
"""

from imdb_jax.study.conclusions import conclusions
from imdb_jax.study.experiments import (
    ALL,
    CUSTOM,
    DEFAULT_SEEDS,
    EXPERIMENTS,
    RUNS,
    seed_replicas,
    select_experiments,
    union,
)
from imdb_jax.study.figures import write_figures
from imdb_jax.study.report import report_markdown
from imdb_jax.study.runner import StudyResult, run_study
from imdb_jax.study.statistics import RULE, SEPARATION, difference, spread, variant_summary

__all__ = [
    "ALL",
    "CUSTOM",
    "DEFAULT_SEEDS",
    "EXPERIMENTS",
    "RULE",
    "RUNS",
    "SEPARATION",
    "StudyResult",
    "conclusions",
    "difference",
    "report_markdown",
    "run_study",
    "seed_replicas",
    "select_experiments",
    "spread",
    "union",
    "variant_summary",
    "write_figures",
]
