"""Frozen settings of one model: architecture, penalties and optimiser hyperparameters."""

from __future__ import annotations

import dataclasses
import math

from imdb_jax.errors import ImdbJaxError


class ConfigError(ImdbJaxError, ValueError):
    """A setting is out of range (negative width, dropout of 1, ...)."""


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
        if isinstance(units, int):
            units = (units,)
        try:
            units = tuple(int(width) for width in units)
        except (TypeError, ValueError):
            raise ConfigError(f"hidden_units must be a list of positive integers, got {self.hidden_units!r}")
        object.__setattr__(self, "hidden_units", units)
        if not units:
            raise ConfigError("hidden_units needs at least one hidden layer")
        if any(width <= 0 for width in units):
            raise ConfigError(f"hidden layer widths must be positive, got {list(units)}")
        if int(self.num_words) <= 0:
            raise ConfigError(f"num_words must be positive, got {self.num_words}")
        object.__setattr__(self, "num_words", int(self.num_words))
        for name in ("dropout_rate", "l1", "l2", "weight_decay", "learning_rate"):
            value = float(getattr(self, name))
            if not math.isfinite(value) or value < 0:
                raise ConfigError(f"{name} must be a finite number >= 0, got {getattr(self, name)!r}")
            object.__setattr__(self, name, value)
        if not self.dropout_rate < 1:
            raise ConfigError(f"dropout_rate must be in [0, 1), got {self.dropout_rate}")
        if self.learning_rate <= 0:
            raise ConfigError(f"learning_rate must be positive, got {self.learning_rate}")

    @property
    def hyperparams(self) -> dict[str, float]:
        """The numeric settings that are traced arrays in a train state (no recompilation)."""
        return {name: getattr(self, name) for name in ("dropout_rate", "l1", "l2", "weight_decay", "learning_rate")}

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "hidden_units": list(self.hidden_units)}

    @classmethod
    def from_dict(cls, values: dict) -> "ModelConfig":
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown model settings: {', '.join(unknown)}")
        return cls(**values)
