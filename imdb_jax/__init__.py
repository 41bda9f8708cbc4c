"""Fast JAX sentiment classifiers on IMDb multi-hot reviews."""

__version__ = "0.1.0"

from imdb_jax.batches import iterate_batches
from imdb_jax.data import IMDbData, Split, load_imdb
from imdb_jax.text import Vocabulary, tokenize
from imdb_jax.config import ModelConfig
from imdb_jax.steps import TrainState, create_train_state, eval_step, train_step
from imdb_jax.train import evaluate, fit, predict
from imdb_jax.checkpoint import load_model, save_model
from imdb_jax.variants import VariantSpec, fit_variants, load_specs
from imdb_jax.study import run_study
