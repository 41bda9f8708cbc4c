"""A study's variants as data: `VariantSpec` (one variant's shape, penalties, optimiser settings
and seed) and `load_specs` (a study read from JSON or TOML)."""

from __future__ import annotations

import dataclasses
import json
import tomllib
from pathlib import Path

from imdb_jax.config import ConfigError, ModelConfig, integer_setting
from imdb_jax.errors import ImdbJaxError


@dataclasses.dataclass(frozen=True)
class VariantSpec:
    """One variant of a study: its shape, penalties, optimiser settings and seed.

    Attributes:
      hidden_units: widths of the hidden layers (any depth >= 1).
      dropout_rate, l1, l2, weight_decay, learning_rate: as in `ModelConfig`.
      seed: seeds this variant's initial weights and dropout (not the data order, which the
        whole study shares); a study with `seeds=N` trains seeds `seed` .. `seed + N - 1`.
      name: a label for reports; derived from the settings when empty.
    """

    hidden_units: tuple[int, ...] = (16, 16)
    dropout_rate: float = 0.0
    l1: float = 0.0
    l2: float = 0.0
    weight_decay: float = 0.0
    learning_rate: float = 1e-3
    seed: int = 0
    name: str = ""

    def __post_init__(self):
        # Validates every setting (strings are not numbers, 1.5 is not a width) and normalises
        # them, so l2=0 and l2=0.0 are one variant with one name.
        checked = self.config(1)
        for name in ("hidden_units", *checked.hyperparams):
            object.__setattr__(self, name, getattr(checked, name))
        object.__setattr__(self, "seed", integer_setting("seed", self.seed))
        if not isinstance(self.name, str):
            raise ConfigError(f"name must be a string, got {self.name!r}", "name")
        if not self.name:
            object.__setattr__(self, "name", self.default_name())

    @classmethod
    def from_config(cls, config: ModelConfig, seed: int = 0) -> VariantSpec:
        """The variant of a `ModelConfig`'s settings (its `num_words` belongs to the data)."""
        settings = {name: getattr(config, name) for name in ("hidden_units", *config.hyperparams)}
        return cls(**settings, seed=seed)

    def config(self, num_words: int) -> ModelConfig:
        return ModelConfig(
            num_words=num_words,
            hidden_units=self.hidden_units,
            dropout_rate=self.dropout_rate,
            l1=self.l1,
            l2=self.l2,
            weight_decay=self.weight_decay,
            learning_rate=self.learning_rate,
        )

    def default_name(self) -> str:
        parts = ["-".join(str(width) for width in self.hidden_units)]
        for label, value, default in (
            ("dropout", self.dropout_rate, 0.0),
            ("l1", self.l1, 0.0),
            ("l2", self.l2, 0.0),
            ("wd", self.weight_decay, 0.0),
            ("lr", self.learning_rate, 1e-3),
        ):
            if value != default:
                parts.append(f"{label}={value:g}")
        if self.seed:
            parts.append(f"seed={self.seed}")
        return " ".join(parts)

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "hidden_units": list(self.hidden_units)}

    @classmethod
    def from_dict(cls, values: dict) -> VariantSpec:
        if not isinstance(values, dict):
            raise ConfigError(f"a variant must be a table of settings, got {values!r}")
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown variant settings: {', '.join(unknown)} (known: {', '.join(sorted(known))})")
        return cls(**values)


def load_specs(path: str | Path) -> list[VariantSpec]:
    """Reads a study from JSON or TOML: a list of variant tables, or {"variants": [...]}.

    TOML has no top-level lists, so there it is `[[variants]]` tables.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ImdbJaxError(f"cannot read the study file {path}: {error}") from None
    try:
        document = tomllib.loads(text) if path.suffix.lower() == ".toml" else json.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as error:
        raise ImdbJaxError(
            f"{path} is not valid {'TOML' if path.suffix.lower() == '.toml' else 'JSON'}: {error}"
        ) from None
    entries = document.get("variants") if isinstance(document, dict) else document
    if not isinstance(entries, list) or not entries:
        raise ImdbJaxError(f"{path} must hold a non-empty list of variants (or a 'variants' list)")
    specs = []
    for number, entry in enumerate(entries, 1):
        try:
            specs.append(VariantSpec.from_dict(entry))
        except (ConfigError, TypeError) as error:
            raise ImdbJaxError(f"{path}, variant {number}: {error}") from None
    return specs
