"""fit_variants: each variant equals `fit` run alone, padding stays inert, numbers do not
recompile, a diverging variant harms no other, the variant axis shards over devices, and
plan_groups groups as documented.

Compilation dominates these tests' time, so the data is tiny and the shapes are few and
reused: every `fit` and `fit_variants` call below uses the same data and batch size.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse as sp

from imdb_jax import Split, VariantSpec, fit_variants
from imdb_jax.train import eval_epoch, fit, train_epoch
from imdb_jax.variants import Group, plan_groups

NUM_WORDS = 64
EPOCHS = 3
BATCH = 32

# Different widths, depths, penalties, dropout, learning rates, weight decay and seeds; two
# shapes, so that `fit` compiles twice. The 4-unit L1 variant padded to 8-8 has padded columns
# and a padded layer, where L1's gradient sign(0) = 1 would act if the mask did not stop it.
SPECS = [
    VariantSpec((4,), l1=0.01, seed=0),
    VariantSpec((8, 8), l1=0.01, seed=1),
    VariantSpec((8, 8), l2=0.01, learning_rate=3e-3, seed=2),
    VariantSpec((8, 8), dropout_rate=0.5, seed=3),
    VariantSpec((4,), dropout_rate=0.3, learning_rate=2e-3, weight_decay=0.01, seed=4),
]
EXPLODING = VariantSpec((4,), learning_rate=1e30, seed=5)


def tiny_reviews(rows: int, seed: int) -> Split:
    """Multi-hot rows whose label is told by which half of the vocabulary most words are from."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, rows).astype(np.float32)
    indptr, indices = [0], []
    for label in labels:
        signal = rng.choice(NUM_WORDS // 2, 5, replace=False) + (NUM_WORDS // 2) * int(label)
        indices.extend(np.unique(np.concatenate([signal, rng.choice(NUM_WORDS, 3, replace=False)])))
        indptr.append(len(indices))
    return Split(sp.csr_matrix((np.ones(len(indices), np.float32), indices, indptr), shape=(rows, NUM_WORDS)), labels)


TRAIN = tiny_reviews(100, seed=0)
VALIDATION = tiny_reviews(40, seed=1)


def run(specs, grouping="pad", **options):
    return fit_variants(specs, TRAIN, VALIDATION, epochs=EPOCHS, batch_size=BATCH, grouping=grouping, progress=False, **options)


@pytest.fixture(scope="module")
def alone():
    """Each spec trained by `fit`, with the study's shared shuffle seed."""
    return [
        fit(spec.config(NUM_WORDS), TRAIN, VALIDATION, epochs=EPOCHS, batch_size=BATCH, seed=spec.seed, shuffle_seed=0, progress=False)
        for spec in SPECS
    ]


@pytest.fixture(scope="module")
def padded():
    return run(SPECS, "pad")


def assert_same_model(result, index, state, history, rtol=1e-5, atol=1e-6):
    got = result.state(index)
    assert jax.tree.structure(got.params) == jax.tree.structure(state.params)
    for mine, theirs in zip(jax.tree.leaves(got.params), jax.tree.leaves(state.params)):
        assert mine.shape == theirs.shape
        np.testing.assert_allclose(mine, theirs, rtol=rtol, atol=atol)
    for key in ("loss", "accuracy", "val_loss", "val_accuracy", "diverged"):
        np.testing.assert_allclose(result.histories[index][key], history[key], rtol=rtol, atol=atol, err_msg=key)


def test_padded_group_matches_fit(padded, alone):
    assert padded.groups == [Group((8, 8), (0, 1, 2, 3, 4))]
    for index, (state, history) in enumerate(alone):
        assert_same_model(padded, index, state, history)
        assert len(padded.histories[index]["loss"]) == EPOCHS


def test_shape_groups_match_fit(alone):
    result = run(SPECS, "shape")
    assert result.groups == [Group((4,), (0, 4)), Group((8, 8), (1, 2, 3))]
    for index, (state, history) in enumerate(alone):
        assert_same_model(result, index, state, history)
        assert result.best_epoch(index) == int(np.argmin(history["val_loss"])) + 1


def _nu(opt_state):
    """rmsprop's running mean of squared gradients, a tree like the params."""
    return opt_state.inner_state[0].nu


def _by_path(tree):
    return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def test_padding_stays_exactly_zero(padded):
    states = padded.states[0]
    mask = states.grad_mask  # leaves with no padding at all carry no mask
    weights, nu, masks = _by_path(states.params), _by_path(_nu(states.opt_state)), _by_path(mask)
    assert masks and set(masks) <= set(weights)
    padded_weights = 0
    for path, keep in masks.items():
        assert weights[path].shape == nu[path].shape == keep.shape
        assert np.all(weights[path][keep == 0] == 0.0) and np.all(nu[path][keep == 0] == 0.0), path
        assert np.any(nu[path][keep == 1] > 0)  # the real weights did train
        padded_weights += int(np.sum(keep == 0))
    assert padded_weights > 0
    # The 4-unit L1 variant uses 4 of 8 first-layer columns and has no 2nd layer.
    first = np.asarray(mask["hidden_0"]["kernel"])
    assert first[0].sum() == 4 * NUM_WORDS and first[1].sum() == 8 * NUM_WORDS
    assert np.asarray(mask["hidden_1"]["kernel"])[0].sum() == 0 and np.asarray(mask["output"]["kernel"])[0].sum() == 4
    np.testing.assert_array_equal(np.asarray(states.layer_active)[:2], [[True, False], [True, True]])


def test_numeric_settings_do_not_recompile(padded):
    changed = [
        VariantSpec((4,), l2=0.1, seed=10),
        VariantSpec((8, 8), l1=0.03, dropout_rate=0.2, seed=11),
        VariantSpec((8, 8), learning_rate=1e-2, seed=12),
        VariantSpec((8, 8), weight_decay=0.1, seed=13),
        VariantSpec((4,), dropout_rate=0.6, l1=0.001, seed=14),
    ]
    compiled = train_epoch._cache_size(), eval_epoch._cache_size()
    result = run(changed, "pad")
    assert (train_epoch._cache_size(), eval_epoch._cache_size()) == compiled
    assert result.groups == padded.groups
    assert all(result.histories[i]["loss"] != padded.histories[i]["loss"] for i in range(len(SPECS)))


@pytest.fixture(scope="module")
def with_exploding():
    """SPECS plus one variant whose learning rate makes it diverge: 6 variants in one group."""
    return run(SPECS + [EXPLODING], "pad")


def test_a_diverging_variant_harms_no_other(padded, with_exploding):
    result = with_exploding
    history = result.histories[len(SPECS)]
    assert any(history["diverged"]), "learning rate 1e30 should diverge"
    first = history["diverged"].index(True)
    assert all(history["diverged"][first:]) and not any(history["diverged"][:first])
    assert np.all(np.isnan(history["loss"][first:])) and np.all(np.isnan(history["val_loss"][first:]))
    state = result.state(len(SPECS))
    assert all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in jax.tree.leaves(state.params))
    for index in range(len(SPECS)):
        assert not any(result.histories[index]["diverged"])
        reference = padded.state(index)
        assert_same_model(result, index, reference, padded.histories[index], rtol=1e-6, atol=1e-7)


SHARDING_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    sys.path.insert(0, sys.argv[1])
    from test_variants import EXPLODING, SPECS, run
    result = run(SPECS + [EXPLODING], "pad")
    kernel = result.states[0].params["hidden_0"]["kernel"]
    print(json.dumps({
        "mesh_devices": len(kernel.sharding.device_set),
        "spec": str(kernel.sharding.spec),
        "shard_rows": sorted({shard.data.shape[0] for shard in kernel.addressable_shards}),
        "stacked_rows": kernel.shape[0],
        "histories": result.histories,
        "params": [[np.asarray(leaf).tolist() for leaf in jax.tree.leaves(result.state(i).params)] for i in range(6)],
    }))
    """
)


def test_variant_axis_shards_over_four_devices(with_exploding):
    """6 variants (not a multiple of 4) on 4 forced CPU devices, in a subprocess, give what one
    device gives here."""
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
    tests = os.path.dirname(os.path.abspath(__file__))
    script = "import jax\n" + SHARDING_SCRIPT
    done = subprocess.run([sys.executable, "-c", script, tests], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found["mesh_devices"] == 4 and "variants" in found["spec"]
    assert found["stacked_rows"] == 8 and found["shard_rows"] == [2]  # 6 variants + 2 discarded copies, 2 per device
    assert len(jax.devices()) == 1 and len(with_exploding.states[0].params["hidden_0"]["kernel"].devices()) == 1
    for index, (history, params) in enumerate(zip(found["histories"], found["params"])):
        for key in ("loss", "accuracy", "val_loss", "val_accuracy", "diverged"):
            np.testing.assert_allclose(history[key], with_exploding.histories[index][key], rtol=1e-5, atol=1e-6, err_msg=key)
        for sharded, single in zip(params, jax.tree.leaves(with_exploding.state(index).params)):
            np.testing.assert_allclose(np.asarray(sharded, np.float32), single, rtol=1e-5, atol=1e-6)
    assert any(found["histories"][len(SPECS)]["diverged"])


# ---------------------------------------------------------------------------------------------
# plan_groups.


def _shapes(groups):
    return [(group.hidden_units, group.members) for group in groups]


def test_plan_groups_shape_and_pad():
    specs = [VariantSpec((4,)), VariantSpec((16, 16)), VariantSpec((4,), l2=0.1), VariantSpec((8, 32, 8))]
    assert _shapes(plan_groups(specs, 10000, strategy="shape")) == [((4,), (0, 2)), ((16, 16), (1,)), ((8, 32, 8), (3,))]
    # Padding takes the widest width at every depth; a shorter model's missing layers carry its last width.
    assert _shapes(plan_groups(specs, 10000, strategy="pad")) == [((16, 32, 16), (0, 1, 2, 3))]
    with pytest.raises(Exception, match="grouping strategy must be auto, shape or pad"):
        plan_groups(specs, 10000, strategy="widest")


def test_plan_groups_auto_on_the_seed_study():
    from imdb_jax.study import select_experiments, union

    specs, _ = union(select_experiments("all"))
    groups = plan_groups(specs, 10000, words_per_review=129.0, batch_size=512, strategy="auto")
    assert sorted(index for group in groups for index in group.members) == list(range(len(specs)))
    wide = specs.index(VariantSpec((512,)))
    # The 512-wide model trains alone: padding a 4- or 16-wide model to 512 units would make it
    # cost as much as the 512 one.
    assert [group.members for group in groups if wide in group.members] == [(wide,)]
    # 16 and the 16-16 variants (none, L1, L2, dropout) differ in depth or numbers only: one group.
    shallow = {index for index, spec in enumerate(specs) if spec.hidden_units in ((16,), (16, 16))}
    assert len(shallow) == 5
    shared = [group.hidden_units for group in groups if shallow <= set(group.members)]
    assert len(shared) == 1 and set(shared[0]) == {16}


def test_plan_groups_auto_merges_depths_but_not_widths():
    depths = [VariantSpec((16,)), VariantSpec((16, 16)), VariantSpec((16,), l2=0.001)]
    assert _shapes(plan_groups(depths, 10000, 129.0, 512, "auto")) == [((16, 16), (0, 1, 2))]
    assert _shapes(plan_groups(depths, 10000, 129.0, 512, "shape")) == [((16,), (0, 2)), ((16, 16), (1,))]
    wide_and_narrow = [VariantSpec((4,)), VariantSpec((512,)), VariantSpec((16,))]
    groups = plan_groups(wide_and_narrow, 10000, 129.0, 512, "auto")
    assert [group for group in groups if 1 in group.members] == [Group((512,), (1,))]
