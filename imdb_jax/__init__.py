"""Fast JAX sentiment classifiers on IMDb multi-hot reviews."""

__version__ = "0.1.0"

from imdb_jax.batches import iterate_batches
from imdb_jax.data import IMDbData, Split, load_imdb
from imdb_jax.text import Vocabulary, tokenize
