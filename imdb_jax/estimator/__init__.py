"""scikit-learn's API on the package's models: `SparseMLPClassifier` and `FusedGridSearchCV`.

Needs scikit-learn (a test and benchmark dependency, not a core one); `import imdb_jax` does not
import this package.
"""

from imdb_jax.estimator.classifier import SparseMLPClassifier
from imdb_jax.estimator.grid_search import FusedGridSearchCV

__all__ = ["FusedGridSearchCV", "SparseMLPClassifier"]
