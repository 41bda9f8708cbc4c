"""Saving a model to a folder and loading it back."""

from __future__ import annotations

import hashlib
import io
import json
import math

import jax
import numpy as np
import pytest
import scipy.sparse as sp

from imdb_jax.config import ModelConfig
from imdb_jax.data.text import Vocabulary
from imdb_jax.errors import ImdbJaxError
from imdb_jax.saved.loading import load_model
from imdb_jax.saved.model_folder import HISTORY_FILE, MODEL_FILE, PARAMS_FILE, SavedModel, save_model
from imdb_jax.train.fit import predict
from imdb_jax.train.steps import create_train_state

WORDS = ("great", "bad", "film", "wonderful", "awful", "plot", "acting", "don't", "boring", "fun")
CONFIG = ModelConfig(num_words=len(WORDS), hidden_units=(6, 4), dropout_rate=0.25, l2=0.001)
HISTORY = {
    "loss": [0.7, 0.5],
    "accuracy": [0.5, 0.75],
    "val_loss": [0.65, math.nan],
    "val_accuracy": [0.6, math.nan],
    "diverged": [False, True],
}
METRICS = {"test_loss": 0.31, "test_accuracy": 0.875}


def _column_rows(rows: list[list[str]]) -> sp.csr_matrix:
    """Multi-hot rows built by hand from the word list, independently of the tokeniser."""
    dense = np.zeros((len(rows), len(WORDS)), np.float32)
    for row, words in enumerate(rows):
        dense[row, [WORDS.index(word) for word in words]] = 1.0
    return sp.csr_matrix(dense)


@pytest.fixture(scope="module")
def state():
    """An initial state with every weight moved, so predictions depend on all of them."""
    state = create_train_state(jax.random.key(0), CONFIG)
    noise = jax.tree_util.tree_map(
        lambda leaf: 0.5 * np.random.default_rng(leaf.size).standard_normal(leaf.shape).astype(np.float32), state.params
    )
    return state.replace(
        params=jax.tree_util.tree_map(lambda leaf, extra: leaf + extra, state.params, noise), step=np.int32(40)
    )


@pytest.fixture(scope="module")
def saved(state, tmp_path_factory):
    folder = tmp_path_factory.mktemp("model") / "nested" / "model"
    assert save_model(folder, state, CONFIG, Vocabulary(WORDS), HISTORY, METRICS) == folder
    return folder


def test_save_then_load_gives_identical_predictions(state, saved):
    loaded = load_model(saved)
    assert isinstance(loaded, SavedModel)
    assert loaded.config == CONFIG
    assert loaded.vocabulary == Vocabulary(WORDS)
    assert loaded.metrics == METRICS
    assert int(loaded.state.step) == 40
    for got, expected in zip(jax.tree_util.tree_leaves(loaded.state.params), jax.tree_util.tree_leaves(state.params)):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(expected))
    # The settings that shape the loss come back with the config (dropout, penalties).
    assert float(loaded.state.hparams["l2"]) == pytest.approx(0.001)
    assert float(loaded.state.hparams["dropout_rate"]) == pytest.approx(0.25)
    x = _column_rows([["great", "film"], ["bad", "awful", "boring"], [], list(WORDS)])
    np.testing.assert_array_equal(predict(loaded.state, x), predict(state, x))
    # The history survives, NaN (diverged) epochs included.
    assert loaded.history["loss"] == HISTORY["loss"] and loaded.history["diverged"] == [False, True]  # pyright: ignore[reportOptionalSubscript]
    assert loaded.history["val_loss"][0] == 0.65 and math.isnan(loaded.history["val_loss"][1])  # pyright: ignore[reportOptionalSubscript]


def test_saved_files_are_plain_numpy_and_json(state, saved):
    with np.load(saved / PARAMS_FILE, allow_pickle=False) as archive:
        assert sorted(archive.files) == sorted(
            f"{layer}/{name}" for layer in ("hidden_0", "hidden_1", "output") for name in ("kernel", "bias")
        )
        np.testing.assert_array_equal(archive["hidden_0/kernel"], np.asarray(state.params["hidden_0"]["kernel"]))
    model = json.loads((saved / MODEL_FILE).read_text())
    assert model["format_version"] == 1 and model["package_version"]
    assert model["config"] == CONFIG.to_dict()
    assert model["vocabulary"] == {"tokenizer": Vocabulary(WORDS).tokenizer, "words": list(WORDS)}
    assert json.loads((saved / HISTORY_FILE).read_text())["val_loss"] == [0.65, None]  # strict JSON
    assert sorted(path.name for path in saved.iterdir()) == sorted(
        [PARAMS_FILE, MODEL_FILE, HISTORY_FILE]
    )  # no temporaries


def test_predict_texts_vectorises_raw_text_with_the_saved_vocabulary(state, saved):
    loaded = load_model(saved)
    texts = [
        "A GREAT film!<br />Great fun.",
        "bad, awful; boring plot",
        "zzz unknown words only",
        "",
        b"don't \xff miss: wonderful",
    ]
    expected = predict(
        state,
        _column_rows([["great", "film", "fun"], ["bad", "awful", "boring", "plot"], [], [], ["don't", "wonderful"]]),
    )
    np.testing.assert_allclose(loaded.predict_texts(texts), expected, rtol=1e-6)
    assert loaded.predict_texts("bad, awful; boring plot").shape == (1,)
    # A review with no known words may come last (device_data once failed on a trailing empty row).
    np.testing.assert_allclose(
        loaded.predict_texts(["great film", "zzz"]), loaded.predict_texts(["", "great film"])[::-1], rtol=1e-6
    )
    assert loaded.predict_texts([]).shape == (0,)


def test_saving_refuses_a_vocabulary_or_params_that_do_not_fit(state, tmp_path):
    with pytest.raises(ImdbJaxError, match="vocabulary has 9 words"):
        save_model(tmp_path / "a", state, CONFIG, Vocabulary(WORDS[:9]))
    wider = ModelConfig(num_words=len(WORDS), hidden_units=(7, 4))
    with pytest.raises(ImdbJaxError, match="hidden_0/kernel"):
        save_model(tmp_path / "b", state, wider, Vocabulary(WORDS))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def _rewrite_model_json(folder, change):
    model = json.loads((folder / MODEL_FILE).read_text())
    change(model)
    (folder / MODEL_FILE).write_text(json.dumps(model))


def _swap_params(folder, arrays):
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    (folder / PARAMS_FILE).write_bytes(buffer.getvalue())
    _rewrite_model_json(folder, lambda model: model.update(params_sha256=hashlib.sha256(buffer.getvalue()).hexdigest()))


def _wrong_shape(folder):
    with np.load(folder / PARAMS_FILE) as archive:
        arrays = {name: archive[name] for name in archive.files}
    arrays["hidden_1/kernel"] = np.zeros((6, 5), np.float32)
    _swap_params(folder, arrays)


def _missing_param(folder):
    with np.load(folder / PARAMS_FILE) as archive:
        arrays = {name: archive[name] for name in archive.files if name != "output/bias"}
    _swap_params(folder, arrays)


def _not_npz(folder):
    data = b"this is not a zip file"
    (folder / PARAMS_FILE).write_bytes(data)
    _rewrite_model_json(folder, lambda model: model.update(params_sha256=hashlib.sha256(data).hexdigest()))


CORRUPTIONS = {
    "no model.json": (lambda folder: (folder / MODEL_FILE).unlink(), "model.json is missing"),
    "no params.npz": (lambda folder: (folder / PARAMS_FILE).unlink(), "params.npz is missing"),
    "model.json not JSON": (lambda folder: (folder / MODEL_FILE).write_text('{"format": '), "not valid JSON"),
    "model.json of something else": (
        lambda folder: (folder / MODEL_FILE).write_text("[1, 2]"),
        "not an imdb_jax model",
    ),
    "newer format": (lambda folder: _rewrite_model_json(folder, lambda m: m.update(format_version=99)), "format 99"),
    "bad config": (
        lambda folder: _rewrite_model_json(folder, lambda m: m["config"].update(dropout_rate=1.5)),
        "dropout_rate",
    ),
    "config without vocabulary": (
        lambda folder: _rewrite_model_json(folder, lambda m: m.pop("vocabulary")),
        "vocabulary",
    ),
    "vocabulary of another size": (
        lambda folder: _rewrite_model_json(folder, lambda m: m["vocabulary"]["words"].pop()),
        "9 words",
    ),
    "truncated params.npz": (
        lambda folder: (folder / PARAMS_FILE).write_bytes((folder / PARAMS_FILE).read_bytes()[:300]),
        "checksum",
    ),
    "params.npz not an npz": (_not_npz, "not a readable .npz"),
    "parameter of the wrong shape": (
        _wrong_shape,
        r"hidden_1/kernel is float32\[6, 5\], the config needs float32\[6, 4\]",
    ),
    "parameter missing": (_missing_param, "missing parameter output/bias"),
    "history.json not JSON": (lambda folder: (folder / HISTORY_FILE).write_text("nan nan"), "history.json"),
}


@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
def test_a_folder_that_is_not_a_model_raises_a_clear_error(state, tmp_path, corruption):
    folder = save_model(tmp_path / "model", state, CONFIG, Vocabulary(WORDS), HISTORY, METRICS)
    load_model(folder)  # intact, it loads
    damage, message = CORRUPTIONS[corruption]
    damage(folder)
    with pytest.raises(ImdbJaxError, match=message) as error:
        load_model(folder)
    assert str(folder) in str(error.value)


def test_missing_or_empty_folders_are_not_models(tmp_path):
    with pytest.raises(ImdbJaxError, match="no such folder"):
        load_model(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ImdbJaxError, match="model.json is missing"):
        load_model(tmp_path / "empty")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ImdbJaxError, match="not a model folder"):
        load_model(tmp_path / "file")


def test_saving_again_replaces_the_model(state, tmp_path):
    folder = save_model(tmp_path / "model", state, CONFIG, Vocabulary(WORDS), HISTORY, METRICS)
    moved = state.replace(params=jax.tree_util.tree_map(lambda leaf: leaf * 2, state.params))
    save_model(folder, moved, CONFIG, Vocabulary(WORDS))
    loaded = load_model(folder)
    np.testing.assert_array_equal(
        np.asarray(loaded.state.params["output"]["kernel"]),  # pyright: ignore[reportAttributeAccessIssue]
        np.asarray(moved.params["output"]["kernel"]),
    )
    assert loaded.history is None and loaded.metrics is None  # pyright: ignore[reportAttributeAccessIssue]
    assert not [path for path in folder.iterdir() if path.name.startswith(".")]


def test_saving_over_a_model_keeps_the_other_files_in_its_folder(state, tmp_path):
    folder = save_model(tmp_path / "model", state, CONFIG, Vocabulary(WORDS), HISTORY, METRICS)
    (folder / "history_loss.png").write_bytes(b"figure")
    (folder / "notes").mkdir()
    (folder / "notes" / "mine.txt").write_text("keep me")
    save_model(folder, state, CONFIG, Vocabulary(WORDS))
    assert (folder / "history_loss.png").read_bytes() == b"figure" and (
        folder / "notes" / "mine.txt"
    ).read_text() == "keep me"
    assert load_model(folder).metrics is None
    assert sorted(path.name for path in tmp_path.iterdir()) == ["model"]  # nothing left beside it


@pytest.mark.parametrize("fail_at", ["params", "history", "model", "swap"])
@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "two renames"])
def test_a_save_killed_part_way_leaves_the_old_model_loadable(state, tmp_path, monkeypatch, fail_at, exchange):
    import imdb_jax.saved.model_folder as checkpoint

    folder = save_model(tmp_path / "model", state, CONFIG, Vocabulary(WORDS), HISTORY, METRICS)
    if not exchange:
        monkeypatch.setattr(checkpoint, "exchange", lambda first, second: False)
    written = []

    def dying_write(path, data):
        written.append(path.name)
        if path.name == {"params": PARAMS_FILE, "history": HISTORY_FILE, "model": MODEL_FILE}.get(fail_at):
            raise KeyboardInterrupt
        return checkpoint.atomic_write.__wrapped__(path, data)

    def dying_swap(first, second):
        raise KeyboardInterrupt

    dying_write.__wrapped__ = checkpoint.atomic_write
    monkeypatch.setattr(checkpoint, "atomic_write", dying_write)
    if fail_at == "swap":
        monkeypatch.setattr(checkpoint, "_swap", dying_swap)
    with pytest.raises(KeyboardInterrupt):
        save_model(
            folder,
            state.replace(params=jax.tree_util.tree_map(lambda leaf: leaf * 2, state.params)),
            CONFIG,
            Vocabulary(WORDS),
        )
    assert load_model(folder).metrics == METRICS  # the old model, whole


_SAVE_FOREVER = """
import itertools, sys
import jax
from imdb_jax.saved.model_folder import save_model
from imdb_jax.config import ModelConfig
from imdb_jax.train.steps import create_train_state
from imdb_jax.data.text import Vocabulary
words = tuple(f"w{index}" for index in range(2000))
config = ModelConfig(num_words=len(words), hidden_units=(64,))
state = create_train_state(jax.random.key(0), config)
print("ready", flush=True)
for number in itertools.count():
    save_model(sys.argv[1], state, config, Vocabulary(words), metrics={"save": number})
"""


def test_a_save_killed_with_sigkill_at_a_random_moment_leaves_a_loadable_model(tmp_path):
    import random
    import signal
    import subprocess
    import sys
    import time

    folder = tmp_path / "model"
    chances = random.Random(0)
    saves = []
    for _attempt in range(3):
        # As a context manager, so its pipe is closed (no ResourceWarning).
        with subprocess.Popen(
            [sys.executable, "-c", _SAVE_FOREVER, str(folder)], stdout=subprocess.PIPE, text=True
        ) as process:
            assert process.stdout.readline() == "ready\n"  # pyright: ignore[reportOptionalMemberAccess]
            time.sleep(chances.uniform(0.2, 0.6))
            process.send_signal(signal.SIGKILL)
            process.wait()
        saves.append(load_model(folder).metrics["save"])  # pyright: ignore[reportOptionalSubscript]  # whichever save won, it is whole
    assert all(isinstance(save, int) for save in saves)


def test_loading_a_model_compiles_nothing(tmp_path):
    """A saved model comes back without one XLA compilation (no init, no eager copies)."""
    import subprocess
    import sys

    state = create_train_state(jax.random.key(0), ModelConfig(num_words=30, hidden_units=(4, 3)))
    save_model(
        tmp_path / "m",
        state,
        ModelConfig(num_words=30, hidden_units=(4, 3)),
        Vocabulary([f"w{i}" for i in range(30)]),  # pyright: ignore[reportArgumentType]
    )
    script = (
        "import sys, jax, jax.monitoring\n"
        "compiles = []\n"
        "jax.monitoring.register_event_duration_secs_listener("
        "lambda event, duration, **kw: compiles.append(event) if event.endswith('backend_compile_duration') else None)\n"
        "from imdb_jax.saved.loading import load_model\n"
        "model = load_model(sys.argv[1])\n"
        "assert model.state.params['hidden_1']['kernel'].shape == (4, 3)\n"
        "print(len(compiles))\n"
    )
    env = {**__import__("os").environ, "IMDB_JAX_COMPILE_CACHE": "off", "JAX_PLATFORMS": "cpu"}
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "m")], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["0"]


def test_the_background_writer_returns_before_the_write_and_hands_its_errors_over(monkeypatch, tmp_path):
    import threading

    import jax.numpy as jnp

    from imdb_jax.train import checkpoints

    release, written = threading.Event(), []

    def slow_write(folder, host, records, meta):
        assert release.wait(10), "the main thread never let the write go on"
        written.append((folder, np.asarray(host["w"]).copy(), len(records), meta))

    monkeypatch.setattr(checkpoints, "_write", slow_write)
    writer = checkpoints.BackgroundWriter(tmp_path, {"run": 1})
    state = {"w": jnp.arange(4.0)}
    writer.save(state, [{"epoch": 1}])  # pyright: ignore[reportArgumentType]  # returns while the write waits
    assert written == []
    state = {"w": state["w"] + 1}  # the next epoch's state; the snapshot is the old one
    release.set()
    writer.wait()
    assert len(written) == 1 and written[0][2] == 1 and written[0][3] == {"run": 1}
    np.testing.assert_array_equal(written[0][1], [0.0, 1.0, 2.0, 3.0])

    def full_disk(folder, host, records, meta):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoints, "_write", full_disk)
    writer.save(state, [{"epoch": 1}, {"epoch": 2}])  # pyright: ignore[reportArgumentType]
    with pytest.raises(OSError, match="No space left"):
        writer.save(state, [{"epoch": 1}, {"epoch": 2}, {"epoch": 3}])  # pyright: ignore[reportArgumentType]  # the error of the write before
    writer.wait()  # handed over once
