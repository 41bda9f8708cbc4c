"""The program store: a stored program gives the numbers `jax.jit` gives, bit for bit; a second
process calls it without tracing; what the key cannot describe goes to `jax.jit`; a damaged
entry is compiled again."""

from __future__ import annotations

import functools
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import run_python

from imdb_jax.train import programs
from imdb_jax.train.programs import Unkeyable, static_key, stored_jit

REPO = Path(__file__).resolve().parents[1]


@stored_jit(static_argnames=("power",))
def _polynomial(x, weights, *, power):
    return jnp.sum(weights["a"] * x**power + weights["b"] * jnp.tanh(x)), x * 2.0


@pytest.fixture()
def store(tmp_path):
    """The store on in `tmp_path` for one test, then back as it was; `_polynomial` starts with
    nothing in memory."""
    before = programs.folder()
    programs.enable(tmp_path / "programs")
    _forget(_polynomial)
    yield tmp_path / "programs"
    programs.enable(before)


def _inputs(size=257):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=size).astype(np.float32))
    return x, {"a": jnp.float32(0.7), "b": jnp.asarray(rng.normal(size=size).astype(np.float32))}


def _forget(function):
    """As a new process would start: nothing compiled in memory."""
    function._loaded.clear()
    function.jitted.clear_cache()


def test_a_stored_program_is_loaded_without_compiling_and_gives_jits_numbers(store, monkeypatch):
    x, weights = _inputs()
    expected = jax.jit(_polynomial.__wrapped__, static_argnames=("power",))(x, weights, power=3)
    first = _polynomial(x, weights, power=3)
    assert len(list(store.glob("*.program"))) == 1
    _forget(_polynomial)

    def no_compiling(*args, **kwargs):
        raise AssertionError("compiled, where the stored program should have been loaded")

    monkeypatch.setattr(programs.StoredFunction, "_compile", no_compiling)
    monkeypatch.setattr(_polynomial, "jitted", None)  # a fall-back to jax.jit would fail too
    loaded = _polynomial(x, weights, power=3)
    for got in (first, loaded):
        for mine, theirs in zip(jax.tree.leaves(got), jax.tree.leaves(expected)):
            assert np.asarray(mine).tobytes() == np.asarray(theirs).tobytes()
    assert _polynomial._loaded and all(compiled is not None for compiled in _polynomial._loaded.values())


def test_shapes_dtypes_weak_types_statics_and_devices_make_new_programs(store):
    x, weights = _inputs()
    _polynomial(x, weights, power=3)
    _polynomial(x, weights, power=2)  # another static
    _polynomial(x[:100], {"a": weights["a"], "b": weights["b"][:100]}, power=2)  # another shape
    _polynomial(x, {"a": 0.7, "b": weights["b"]}, power=2)  # a weak-typed Python float
    _polynomial(x.astype(jnp.bfloat16), {"a": weights["a"], "b": weights["b"]}, power=2)  # a dtype
    moved = jax.device_put((x, weights), jax.devices()[-1])
    _polynomial(*moved, power=2)
    names = list(store.glob("*.program"))
    assert len(names) == (6 if len(jax.devices()) > 1 else 5), names
    # The same call again is the same program, in memory and on disk.
    _polynomial(x, weights, power=3)
    assert len(list(store.glob("*.program"))) == len(names)


def test_a_damaged_entry_is_removed_and_stored_again(store):
    x, weights = _inputs()
    expected = np.asarray(_polynomial(x, weights, power=3)[0])
    (entry,) = store.glob("*.program")
    whole = entry.read_bytes()
    entry.write_bytes(whole[: len(whole) // 2])  # what a process killed mid-write would leave
    _forget(_polynomial)
    assert np.asarray(_polynomial(x, weights, power=3)[0]).tobytes() == expected.tobytes()
    (entry,) = store.glob("*.program")
    _forget(_polynomial)
    entry.write_bytes(b"")
    assert np.asarray(_polynomial(x, weights, power=3)[0]).tobytes() == expected.tobytes()
    assert entry.stat().st_size > 0


def test_calls_under_transformations_and_with_the_store_off_go_to_jit(store):
    x, weights = _inputs(8)
    batched = jax.vmap(lambda row: _polynomial(row, weights, power=2)[0])(jnp.stack([x, x + 1.0]))
    assert batched.shape == (2,)
    assert jax.grad(lambda value: _polynomial(value, weights, power=2)[0])(x).shape == x.shape
    assert not list(store.glob("*.program"))
    programs.enable(None)
    _polynomial(x, weights, power=2)
    assert not list(store.glob("*.program"))


def _closure(scale):
    def scaled(value):
        return value * scale

    return scaled


def test_static_values_are_described_by_value_or_not_at_all():
    import optax

    # Closures of a library in the key (optax's version is): what a closure holds counts.
    assert static_key(optax.scale(2.0).update) == static_key(optax.scale(2.0).update)
    assert static_key(optax.scale(2.0).update) != static_key(optax.scale(3.0).update)
    assert static_key((1, "a", None, np.dtype(np.float32))) == static_key((1, "a", None, np.dtype(np.float32)))
    assert static_key(1) != static_key(1.0) and static_key(True) != static_key(1)
    scale = optax.scale(2.0).update
    assert static_key(functools.partial(scale, 1)) != static_key(functools.partial(scale, 2))
    # This test module's own functions are not code the key covers (their edits would go unseen).
    for unkeyable in (_closure, lambda value: value, object(), jax.vmap(_closure(2.0))):
        with pytest.raises(Unkeyable):
            static_key(unkeyable)
    from imdb_jax.train import epochs, steps

    assert static_key(steps.eval_step).startswith("function:imdb_jax.train.steps.eval_step")
    assert static_key(epochs._sharded_eval) != static_key(epochs._sharded_predict)


def test_a_state_holding_functions_is_not_stored_but_still_trains(store):
    from imdb_jax.config import ModelConfig
    from imdb_jax.train.steps import _create_train_state, create_train_state, initial_params

    state = create_train_state(jax.random.key(3), ModelConfig(num_words=12, hidden_units=(4,)))
    params = initial_params(jax.random.key(3), 12, (4,))
    # The fused study builds its initial weights from `initial_params` alone: the same bits.
    for mine, theirs in zip(jax.tree.leaves(params), jax.tree.leaves(state.params)):
        assert np.asarray(mine).tobytes() == np.asarray(theirs).tobytes()
    stored = {path.name.split("-")[0] for path in store.glob("*.program")}
    assert "initial_params" in stored and "create_train_state" not in stored
    assert _create_train_state._cache_size() >= 1  # pyright: ignore[reportAttributeAccessIssue]


# A warm process: a tiny fit_variants run, its history and weights printed as hex, and how many
# programs it traced (JAX's log of "Finished tracing" for the epoch programs).
FIT = textwrap.dedent(
    """
    import logging, sys
    import numpy as np, scipy.sparse as sp
    import jax
    traced = []
    class Count(logging.Handler):
        def emit(self, record):
            message = record.getMessage()
            if message.startswith("Finished tracing") and ("train_epoch" in message or "sum_over_batches" in message):
                traced.append(message)
    logging.getLogger("jax").addHandler(Count())
    logging.getLogger("jax").setLevel(logging.DEBUG)
    jax.config.update("jax_log_compiles", True)
    from imdb_jax import Split, VariantSpec, fit_variants
    from imdb_jax.train import compile_cache
    compile_cache.enable(sys.argv[1], force=True)
    rng = np.random.default_rng(0)
    x = sp.csr_matrix((rng.random((120, 40)) < 0.2).astype(np.float32))
    y = (np.asarray(x[:, :20].sum(axis=1)).ravel() > np.asarray(x[:, 20:].sum(axis=1)).ravel()).astype(np.float32)
    specs = [VariantSpec((4,), seed=0), VariantSpec((8, 8), dropout_rate=0.5, seed=1)]
    result = fit_variants(specs, Split(x[:80], y[:80]), Split(x[80:], y[80:]), epochs=2, batch_size=32, progress=False)
    print("HISTORY", result.histories)
    print("WEIGHTS", [np.asarray(leaf).tobytes().hex() for leaf in jax.tree.leaves(result.state(1).params)])
    print("TRACED", len(traced))
    """
)


def _fit(cache: Path) -> dict[str, str]:
    stdout = run_python(FIT, str(cache))
    return dict(line.split(" ", 1) for line in stdout.splitlines() if line.split(" ", 1)[0].isupper())


def test_a_second_process_traces_no_epoch_program_and_gets_the_same_bits(tmp_path):
    off = _fit(Path("off"))  # no store, no cache: jax.jit all the way
    first = _fit(tmp_path / "xla")
    second = _fit(tmp_path / "xla")
    assert list((tmp_path / "xla" / programs.FOLDER).glob("train_epoch-*.program"))
    assert int(off["TRACED"]) > 0 and int(first["TRACED"]) > 0
    assert second["TRACED"] == "0"
    for run in (first, second):
        assert run["HISTORY"] == off["HISTORY"] and run["WEIGHTS"] == off["WEIGHTS"]


SEEDS = [0, 1, 7, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**40 + 3, -1, -(2**31), -(2**40) - 5]


def test_variant_keys_from_stored_programs_are_jax_randoms_own_for_any_seed(store):
    from imdb_jax.train import variants

    for function in (variants._seed_keys, variants._dropout_keys):
        _forget(function)  # earlier tests may have loaded them in this process

    def words(keys):
        return [np.asarray(jax.random.key_data(key)).tolist() for key in keys]

    expected = [jax.random.split(jax.random.key(seed)) for seed in SEEDS]
    assert [words(variants._keys(seed)) for seed in SEEDS] == [words(pair) for pair in expected]
    dropout = variants._dropout_keys(np.array([[variants._seed_word(seed) for seed in SEEDS]], np.uint32))
    assert words(dropout[0]) == words(pair[1] for pair in expected)
    assert {path.name.split("-")[0] for path in store.glob("*.program")} == {"seed_keys", "dropout_keys"}


def test_compilations_for_the_store_overlapping_in_threads_leave_jaxs_cache_setting_as_it_was():
    from jax._src import compilation_cache as cache

    before = cache._cache_checked, cache._cache_used
    first, second = programs._compiled_afresh(), programs._compiled_afresh()
    first.__enter__()
    second.__enter__()  # a second thread's compilation starts before the first one ends
    assert cache._cache_used is False
    first.__exit__(None, None, None)
    assert cache._cache_used is False  # the second is still compiling
    second.__exit__(None, None, None)
    # Each putting back what it found left JAX's cache off for the rest of the process.
    assert (cache._cache_checked, cache._cache_used) == before
