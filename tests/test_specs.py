"""Variant specs: settings of the wrong type are refused with a clear message, numbers are
normalised so equal settings make one variant."""

from __future__ import annotations

import json

import numpy as np
import pytest

from imdb_jax.config import ConfigError, ModelConfig
from imdb_jax.errors import ImdbJaxError
from imdb_jax.specs import VariantSpec, load_specs


@pytest.mark.parametrize(
    "values, message",
    [
        ({"hidden_units": [16], "l2": "abc"}, "l2 must be a number, got 'abc'"),
        ({"dropout_rate": "0.5"}, "dropout_rate must be a number, got '0.5'"),
        ({"learning_rate": None}, "learning_rate must be a number, got None"),
        ({"l1": True}, "l1 must be a number, got True"),
        ({"seed": "abc"}, "seed must be an integer, got 'abc'"),
        ({"seed": 1.5}, "seed must be an integer, got 1.5"),
        ({"seed": 2.0}, "seed must be an integer, got 2.0"),
        ({"seed": False}, "seed must be an integer, got False"),
        ({"hidden_units": [16.5]}, r"hidden_units must be a list of positive integers, got \[16.5\]"),
        ({"hidden_units": "16"}, "hidden_units must be a list of positive integers, got '16'"),
        ({"hidden_units": [16, "8"]}, "hidden_units must be a list of positive integers"),
        ({"name": 7}, "name must be a string, got 7"),
    ],
)
def test_settings_of_the_wrong_type_are_refused(values, message):
    with pytest.raises(ConfigError, match=message) as error:
        VariantSpec.from_dict(values)
    assert error.value.setting == next(iter(values)) if len(values) == 1 else "l2"


@pytest.mark.parametrize(
    "text", ['[{"hidden_units": [16], "l2": "abc"}]', '[{"dropout_rate": "0.5", "name": "half"}]', '[{"seed": "abc"}]']
)
def test_a_spec_file_with_a_string_for_a_number_is_an_error_naming_the_file(tmp_path, text):
    path = tmp_path / "specs.json"
    path.write_text(text)
    with pytest.raises(ImdbJaxError, match=r"variant 1: \w+ must be an? (number|integer)") as error:
        load_specs(path)
    assert str(path) in str(error.value)


def test_numbers_are_normalised_so_equal_settings_are_one_variant():
    assert VariantSpec((16,), l2=0) == VariantSpec((16,), l2=0.0)
    assert VariantSpec((16,), l2=0).to_dict() == VariantSpec((16,), l2=0.0).to_dict()
    spec = VariantSpec([np.int64(8), 4], dropout_rate=np.float32(0.5), l1=1, seed=np.int64(3))  # pyright: ignore[reportArgumentType]
    assert spec.hidden_units == (8, 4) and type(spec.hidden_units[0]) is int
    assert type(spec.dropout_rate) is float and type(spec.l1) is float and type(spec.seed) is int
    assert spec.name == "8-4 dropout=0.5 l1=1 seed=3"
    assert json.loads(json.dumps(spec.to_dict())) == spec.to_dict()


def test_the_study_union_merges_int_and_float_spellings(tmp_path):
    from imdb_jax.study import union

    path = tmp_path / "specs.json"
    path.write_text(
        '[{"hidden_units": [16], "l2": 0}, {"hidden_units": [16], "l2": 0.0}, {"hidden_units": [16.0e0]}]'.replace(
            "16.0e0", "16"
        )
    )
    specs, members = union({"custom": load_specs(path)})
    assert len(specs) == 1 and members == {"custom": [0]}


def test_model_config_refuses_strings_and_fractional_integers():
    with pytest.raises(ConfigError, match="num_words must be an integer"):
        ModelConfig(num_words=100.5)  # pyright: ignore[reportArgumentType]
    with pytest.raises(ConfigError, match="weight_decay must be a number"):
        ModelConfig(weight_decay="0")  # pyright: ignore[reportArgumentType]
    assert ModelConfig(hidden_units=8).hidden_units == (8,)  # pyright: ignore[reportArgumentType]
