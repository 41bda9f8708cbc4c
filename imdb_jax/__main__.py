import sys

from imdb_jax.cli import main

sys.exit(main())
