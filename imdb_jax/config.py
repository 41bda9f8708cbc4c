"""Frozen settings of one model: architecture, penalties and optimiser hyperparameters."""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any

from imdb_jax.errors import ImdbJaxError

# The largest batch: more than IMDb's largest split (25,000 reviews) in one batch. A larger one
# would only cost memory (a dense first layer of 32,768 x 10,000 float32 is already 1.3 GB).
MAX_BATCH_SIZE = 1 << 15

# The numeric settings of a model: traced arrays in a train state, so variants that differ only in
# them share one compiled program. The one list of their names.
HYPERPARAMS = ("dropout_rate", "l1", "l2", "weight_decay", "learning_rate")


class ConfigError(ImdbJaxError, ValueError):
    """A setting is out of range or of the wrong type (negative width, dropout of 1, "0.5").

    Attributes:
      setting: the name of the offending setting (e.g. "dropout_rate"), so a command line can
        name its own option instead; None when the problem is not one setting's.
    """

    def __init__(self, message: str, setting: str | None = None):
        super().__init__(message)
        self.setting = setting


def integer_setting(name: str, value: Any) -> int:
    """`value` as an int; a bool, a float (even 2.0) or a string such as "3" is refused."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ConfigError(f"{name} must be an integer, got {value!r}", name)
    return int(value)


def number_setting(name: str, value: Any) -> float:
    """`value` as a float (ints and NumPy numbers too); a bool or a string such as "0.5" is refused."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ConfigError(f"{name} must be a number, got {value!r}", name)
    return float(value)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """One multi-hot MLP and how it is trained.

    Attributes:
      num_words: input width, the vocabulary size (derive it from the data and pass it in with
        `dataclasses.replace`).
      hidden_units: width of each hidden relu layer, first to last; at least one layer.
      dropout_rate: fraction of each hidden layer's units dropped while training (Keras
        `Dropout` after every hidden layer); 0 disables it.
      l1: Keras `kernel_regularizer` L1 factor: `l1 * sum|w|` over hidden kernels is added to
        the loss.
      l2: Keras L2 factor: `l2 * sum w**2` over hidden kernels is added to the loss.
      weight_decay: decoupled weight decay (`optax.add_decayed_weights`), scaled by the learning
        rate like AdamW and Keras' `weight_decay`.
      learning_rate: rmsprop step size (Keras default 1e-3).
    """

    num_words: int = 10000
    hidden_units: tuple[int, ...] = (16, 16)
    dropout_rate: float = 0.0
    l1: float = 0.0
    l2: float = 0.0
    weight_decay: float = 0.0
    learning_rate: float = 1e-3

    def __post_init__(self):
        units = self.hidden_units
        if isinstance(units, numbers.Integral) and not isinstance(units, bool):
            units = (units,)
        if isinstance(units, (str, bytes)) or not hasattr(units, "__iter__"):
            raise ConfigError(
                f"hidden_units must be a list of positive integers, got {self.hidden_units!r}", "hidden_units"
            )
        try:
            units = tuple(integer_setting("hidden_units", width) for width in units)
        except ConfigError:
            raise ConfigError(
                f"hidden_units must be a list of positive integers, got {self.hidden_units!r}", "hidden_units"
            ) from None
        object.__setattr__(self, "hidden_units", units)
        if not units:
            raise ConfigError("hidden_units needs at least one hidden layer", "hidden_units")
        if any(width <= 0 for width in units):
            raise ConfigError(f"hidden_units: widths must be positive, got {list(units)}", "hidden_units")
        num_words = integer_setting("num_words", self.num_words)
        if num_words <= 0:
            raise ConfigError(f"num_words must be positive, got {self.num_words}", "num_words")
        object.__setattr__(self, "num_words", num_words)
        for name in HYPERPARAMS:
            value = number_setting(name, getattr(self, name))
            if not math.isfinite(value) or value < 0:
                raise ConfigError(f"{name} must be a finite number >= 0, got {getattr(self, name)!r}", name)
            object.__setattr__(self, name, value)
        if not self.dropout_rate < 1:
            raise ConfigError(f"dropout_rate must be in [0, 1), got {self.dropout_rate}", "dropout_rate")
        if self.learning_rate <= 0:
            raise ConfigError(f"learning_rate must be positive, got {self.learning_rate}", "learning_rate")

    @property
    def hyperparams(self) -> dict[str, float]:
        """The numeric settings that are traced arrays in a train state (no recompilation)."""
        return {name: getattr(self, name) for name in HYPERPARAMS}

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "hidden_units": list(self.hidden_units)}

    @classmethod
    def from_dict(cls, values: dict) -> ModelConfig:
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown model settings: {', '.join(unknown)}")
        return cls(**values)
