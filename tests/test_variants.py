"""fit_variants: each variant is bitwise what `fit` gives it alone, in any company (small
studies, reordered studies, among 64 others, spread over 4 devices); numbers do not recompile; a
diverging variant harms no other; best weights are those of the best epoch; a checkpointed run
resumes bitwise, also after `kill -9`.

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
from imdb_jax.models.layout import plan_layout
from imdb_jax.train.epochs import sum_over_batches, train_epoch
from imdb_jax.train.fit import fit

NUM_WORDS = 64
EPOCHS = 3
BATCH = 32

# Different widths, depths, penalties, dropout, learning rates, weight decay and seeds.
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
HISTORY_KEYS = ("loss", "accuracy", "val_loss", "val_accuracy", "diverged")


def run(specs, **options):
    options = {"epochs": EPOCHS, "batch_size": BATCH, "progress": False, **options}
    return fit_variants(specs, TRAIN, VALIDATION, **options)


def leaves(state):
    return [np.asarray(leaf) for leaf in jax.tree.leaves(state.params)]


def assert_bitwise(result, index, state, history):
    """The variant's weights, rmsprop state and history are identical, bit for bit."""
    got = result.state(index)
    assert jax.tree.structure(got.params) == jax.tree.structure(state.params)
    for mine, theirs in zip(
        jax.tree.leaves((got.params, got.opt_state)), jax.tree.leaves((state.params, state.opt_state))
    ):
        assert np.asarray(mine).shape == np.asarray(theirs).shape
        assert np.array_equal(np.asarray(mine), np.asarray(theirs))
    for key in HISTORY_KEYS:
        assert np.array_equal(result.histories[index][key], history[key], equal_nan=key != "diverged"), key


@pytest.fixture(scope="module")
def alone():
    """Each spec trained by `fit`, with the study's shared shuffle seed."""
    return [
        fit(
            spec.config(NUM_WORDS),
            TRAIN,
            VALIDATION,
            epochs=EPOCHS,
            batch_size=BATCH,
            seed=spec.seed,
            shuffle_seed=0,
            progress=False,
        )
        for spec in SPECS
    ]


@pytest.fixture(scope="module")
def together():
    return run(SPECS)


def test_every_variant_is_bitwise_what_fit_gives_it(together, alone):
    for index, (state, history) in enumerate(alone):
        assert_bitwise(together, index, state, history)
        assert len(together.histories[index]["loss"]) == EPOCHS
        assert together.best_epoch(index) == int(np.argmin(history["val_loss"])) + 1
    # The histories are real training: they differ between variants and the losses fall.
    assert len({tuple(history["loss"]) for history in together.histories}) == len(SPECS)
    assert all(history["loss"][-1] < history["loss"][0] for history in together.histories)


def test_a_variant_does_not_depend_on_its_company(together):
    """The same spec, seed and data order in other studies: reordered, with other widths and
    depths beside it, and among 64 others; bitwise the same every time."""
    target = SPECS[1]
    reference = together.state(1)
    others = [
        VariantSpec((w,) * d, l2=0.001 * (i % 3), dropout_rate=0.1 * (i % 2), seed=100 + i)
        for i, (w, d) in enumerate([(4, 1), (8, 2), (16, 1), (32, 3)] * 16)
    ]
    compositions = [
        list(reversed(SPECS)),
        [VariantSpec((32,), seed=7), target, VariantSpec((4, 4, 4), dropout_rate=0.2, seed=8)],
        others[:32] + [target] + others[32:],
    ]
    assert len(compositions[-1]) == 65
    for specs in compositions:
        result = run(specs)
        index = specs.index(target)
        assert_bitwise(result, index, reference, together.histories[1])


def test_a_variant_is_its_own_in_a_big_block_of_its_own_shape_and_with_a_chunked_bag():
    """Issue 16: the target among 9 others of its shape and settings (one block of 10, so the
    block's batched contractions run at size 10), on a split big enough that the bag takes
    several chunks at the capacity training really uses; bitwise the target alone."""
    from imdb_jax.models import layers
    from imdb_jax.train.device_data import to_device
    from imdb_jax.train.loop import EpochPlan

    big = tiny_reviews(900, seed=3)
    options = {"epochs": 2, "batch_size": 300, "progress": False}
    target = SPECS[1]  # (8, 8) with L1
    alone = fit_variants([target], big, VALIDATION, **options)
    crowd = [
        VariantSpec((8, 8), l1=0.01 * (1 + index % 3), learning_rate=1e-3 * (1 + index % 2), seed=300 + index)
        for index in range(9)
    ]
    specs = crowd[:4] + [target] + crowd[4:]
    together = fit_variants(specs, big, VALIDATION, **options)
    shard, slot = together._where(4)
    (block,) = [block for block in together.layout.blocks if block.start <= slot < block.start + block.size]
    assert block.size == 10 and block.hidden_units == (8, 8)
    # The capacity the training epochs cut batches at, and the chunks the bag takes there.
    capacity = EpochPlan(to_device(big), options["batch_size"], shuffle=True).capacity[1]
    assert capacity // layers.bag_chunk(capacity) >= 2
    assert_bitwise(together, 4, alone.state(0), alone.histories[0])


def test_layout_puts_first_layers_side_by_side_without_padding(together):
    layout = together.layout
    # Blocks: one per (widths, dropout or not, penalty or not), each exactly as wide as its members.
    assert [(block.hidden_units, block.size, block.dropout, block.penalty) for block in layout.blocks] == [
        ((4,), 1, False, True),
        ((4,), 1, True, False),
        ((8, 8), 2, False, True),
        ((8, 8), 1, True, False),
    ]
    assert layout.width == 4 + 4 + 16 + 8
    kernel = together.fused.params["first"]["kernel"]
    assert kernel.shape == (1, NUM_WORDS, layout.width)
    assert together.fused.params["block_2"]["hidden_1"]["kernel"].shape == (1, 2, 8, 8)
    # Variants spread over 3 devices: every block padded with copies to a multiple of 3.
    layout3, members, slot_of = plan_layout(SPECS, NUM_WORDS, shards=3)
    assert [block.size for block in layout3.blocks] == [1, 1, 1, 1]
    assert len(members) == 3 * layout3.slots and sorted(set(members)) == list(range(len(SPECS)))
    assert [members[slot] for slot in slot_of] == list(range(len(SPECS)))


def test_numeric_settings_do_not_recompile(together):
    changed = [
        VariantSpec((4,), l2=0.1, seed=10),
        VariantSpec((8, 8), l1=0.03, seed=11),
        VariantSpec((8, 8), learning_rate=1e-2, l2=0.05, seed=12),
        VariantSpec((8, 8), dropout_rate=0.2, seed=13),
        VariantSpec((4,), dropout_rate=0.6, weight_decay=0.1, seed=14),
    ]
    compiled = train_epoch._cache_size(), sum_over_batches._cache_size()  # pyright: ignore[reportAttributeAccessIssue]
    result = run(changed)
    assert (train_epoch._cache_size(), sum_over_batches._cache_size()) == compiled  # pyright: ignore[reportAttributeAccessIssue]
    assert result.layout == together.layout
    # The reused programs took the new numbers (not the first run's, compiled in): each variant
    # is bitwise what `fit` gives it alone.
    for index, spec in enumerate(changed):
        alone = fit(
            spec.config(NUM_WORDS),
            TRAIN,
            VALIDATION,
            epochs=EPOCHS,
            batch_size=BATCH,
            seed=spec.seed,
            shuffle_seed=0,
            progress=False,
        )
        assert_bitwise(result, index, *alone)


@pytest.fixture(scope="module")
def with_exploding():
    """SPECS plus one variant whose learning rate makes it diverge."""
    return run(SPECS + [EXPLODING])


def test_a_diverging_variant_harms_no_other(together, with_exploding):
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
        assert_bitwise(result, index, together.state(index), together.histories[index])


def test_fit_warns_and_keeps_finite_weights_when_its_model_diverges(capsys):
    state, history = fit(
        EXPLODING.config(NUM_WORDS),
        TRAIN,
        VALIDATION,
        epochs=EPOCHS,
        batch_size=BATCH,
        seed=5,
        shuffle_seed=0,
        progress=False,
    )
    assert history["diverged"][-1] and np.isnan(history["loss"][-1])
    assert "diverged in epoch" in capsys.readouterr().err
    assert all(np.all(np.isfinite(leaf)) for leaf in leaves(state))


def test_best_weights_are_the_weights_of_the_best_epoch():
    spec = VariantSpec((8, 8), learning_rate=0.05, seed=3)
    # Validation labels opposite to training's: the better the fit, the worse validation gets,
    # so the best epoch is an early one and the last weights are not the best.
    contrary = Split(VALIDATION.x, 1.0 - VALIDATION.y)
    result = fit_variants([spec], TRAIN, contrary, epochs=6, batch_size=BATCH, progress=False)
    best = result.best_epoch(0)
    assert best is not None and best < 6, result.histories[0]["val_loss"]
    shorter = fit_variants([spec], TRAIN, contrary, epochs=best, batch_size=BATCH, progress=False)
    assert [np.array_equal(a, b) for a, b in zip(leaves(result.state(0, "best")), leaves(shorter.state(0)))] == [
        True
    ] * 6
    assert not all(np.array_equal(a, b) for a, b in zip(leaves(result.state(0)), leaves(shorter.state(0))))
    state, _ = fit(
        spec.config(NUM_WORDS),
        TRAIN,
        contrary,
        epochs=6,
        batch_size=BATCH,
        seed=3,
        shuffle_seed=0,
        progress=False,
        restore_best=True,
    )
    assert all(np.array_equal(a, b) for a, b in zip(leaves(state), leaves(shorter.state(0))))
    with pytest.raises(Exception, match="weights must be"):
        result.state(0, "middle")


def test_a_checkpointed_run_resumes_bitwise(tmp_path, together):
    first = run(SPECS, epochs=1, checkpoint_dir=tmp_path)
    assert len(first.histories[0]["loss"]) == 1
    resumed = run(SPECS, checkpoint_dir=tmp_path, resume=True)
    for index in range(len(SPECS)):
        assert_bitwise(resumed, index, together.state(index), together.histories[index])
        best = zip(leaves(resumed.state(index, "best")), leaves(together.state(index, "best")))
        assert all(np.array_equal(a, b) for a, b in best)
    with pytest.raises(Exception, match="different run"):
        run(SPECS[:2], checkpoint_dir=tmp_path, resume=True)


KILL_SCRIPT = textwrap.dedent(
    """
    import json, sys
    sys.path.insert(0, sys.argv[1])
    import numpy as np
    from test_variants import SPECS, run
    result = run(SPECS, epochs=int(sys.argv[3]), checkpoint_dir=sys.argv[2], resume=True)
    print(json.dumps({"histories": result.histories,
                      "params": [[np.asarray(leaf).tolist() for leaf in __import__("jax").tree.leaves(result.state(i).params)]
                                 for i in range(len(SPECS))]}))
    """
)


def test_a_run_killed_at_a_random_epoch_resumes_to_the_same_result(tmp_path):
    """`kill -9` a real training process once its checkpoint reaches a random epoch, run the same
    command again, and compare with an uninterrupted run."""
    import json as json_module
    import signal
    import time

    epochs = 12
    tests = os.path.dirname(os.path.abspath(__file__))
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    kill_after = int(np.random.default_rng().integers(1, epochs - 2))
    folder = tmp_path / "killed"
    process = subprocess.Popen(
        [sys.executable, "-c", KILL_SCRIPT, tests, str(folder), str(epochs)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None:
        meta = folder / "run.json"
        if meta.exists() and json_module.loads(meta.read_text())["epochs_done"] >= kill_after:
            break
        time.sleep(0.002)
    killed = process.poll() is None
    process.send_signal(signal.SIGKILL)
    process.communicate()
    assert killed, "the run ended before it could be killed"
    done = json_module.loads((folder / "run.json").read_text())["epochs_done"]
    assert 1 <= done < epochs
    resumed = subprocess.run(
        [sys.executable, "-c", KILL_SCRIPT, tests, str(folder), str(epochs)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    whole = subprocess.run(
        [sys.executable, "-c", KILL_SCRIPT, tests, str(tmp_path / "whole"), str(epochs)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert whole.returncode == 0, whole.stderr[-3000:]
    assert json_module.loads(resumed.stdout.splitlines()[-1]) == json_module.loads(whole.stdout.splitlines()[-1])


SHARDING_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import jax
    import numpy as np
    sys.path.insert(0, sys.argv[1])
    from test_variants import EXPLODING, SPECS, run
    import imdb_jax.train.loop as loop
    compiled = {}
    train_epoch = loop.train_epoch

    def first_compiled(state, data, rows, **options):  # the epoch program as XLA compiled it
        compiled.setdefault("hlo", train_epoch.lower(state, data, rows, **options).compile().as_text())
        return train_epoch(state, data, rows, **options)

    loop.train_epoch = first_compiled
    result = run(SPECS + [EXPLODING], devices=jax.devices())  # all 4, not the count that balances the work
    kernel = result.fused.params["first"]["kernel"]
    print(json.dumps({
        "mesh_devices": len(kernel.sharding.device_set),
        "spec": str(kernel.sharding.spec),
        "shard_rows": sorted({shard.data.shape[0] for shard in kernel.addressable_shards}),
        "stacked_rows": kernel.shape[0],
        "all_gathers": compiled["hlo"].count("all-gather("),
        "histories": result.histories,
        "params": [[np.asarray(leaf).tolist() for leaf in jax.tree.leaves(result.state(i).params)] for i in range(6)],
    }))
    """
)


def test_variant_axis_shards_over_four_devices(with_exploding):
    """6 variants on 4 forced CPU devices, in a subprocess, give bitwise what one device gives."""
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
    tests = os.path.dirname(os.path.abspath(__file__))
    script = "import jax\n" + SHARDING_SCRIPT
    done = subprocess.run([sys.executable, "-c", script, tests], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found["mesh_devices"] == 4 and "variants" in found["spec"]
    assert found["stacked_rows"] == 4 and found["shard_rows"] == [1]  # one shard of the fused kernel per device
    # Each device steps its own shard only: left to XLA's partitioner, every device gathered all
    # four shards' kernels and computed every shard's embedding bag.
    assert found["all_gathers"] == 0
    reference = with_exploding
    if jax.default_backend() != "cpu" or len(jax.devices()) != 1:  # this process has other devices: train on one CPU
        reference = run(SPECS + [EXPLODING], devices=jax.devices("cpu")[:1])
    expected = json.loads(json.dumps({"histories": reference.histories}))["histories"]
    for index, (history, params) in enumerate(zip(found["histories"], found["params"])):
        assert history == expected[index]
        for sharded, single in zip(params, leaves(reference.state(index))):
            assert np.array_equal(np.asarray(sharded, np.float32), single)
    assert any(found["histories"][len(SPECS)]["diverged"])


def test_a_variant_does_not_depend_on_its_company_when_the_bag_has_several_chunks():
    from imdb_jax.models import layers

    big = tiny_reviews(900, seed=2)
    options = {"epochs": 2, "batch_size": 300, "progress": False}
    target = SPECS[3]
    alone = fit_variants([target], big, VALIDATION, **options)
    crowd = [
        VariantSpec((64,), seed=20),
        VariantSpec((16, 8), l2=0.01, seed=21),
        target,
        VariantSpec((8, 8), dropout_rate=0.5, seed=22),
    ]
    together = fit_variants(crowd, big, VALIDATION, **options)
    # 300 reviews of ~8 words: 3,072 occurrence slots, three chunks of the bag.
    assert layers.bag_chunk(3072) == 1024
    assert_bitwise(together, 2, alone.state(0), alone.histories[0])


def test_splits_of_nearly_equal_size_share_one_compiled_epoch():
    """Cross-validation folds (16,666 and 16,667 reviews) compile one training epoch, not one
    each: a split's arrays are padded to a bucketed size, and the padding is never batched."""
    options = {"epochs": 1, "batch_size": BATCH, "progress": False}
    specs = SPECS[:2]
    fit_variants(specs, tiny_reviews(101, seed=7), VALIDATION, **options)
    compiled = train_epoch._cache_size()  # pyright: ignore[reportAttributeAccessIssue]
    fit_variants(specs, tiny_reviews(103, seed=8), tiny_reviews(41, seed=9), **options)
    assert train_epoch._cache_size() == compiled  # pyright: ignore[reportAttributeAccessIssue]


def test_the_bucket_padding_changes_no_number(monkeypatch):
    """Training on splits padded to a bucketed size is bitwise training on their exact size."""
    import imdb_jax.train.loop as loop

    padded = run(SPECS)
    exact_to_device = loop.to_device
    sizes = []

    def exact(split, dense_words=0, *, bucket_sizes=0):
        data = exact_to_device(split, dense_words)
        sizes.append(data.num_rows)
        return data

    monkeypatch.setattr(loop, "to_device", exact)
    alone = run(SPECS)
    assert sizes == [TRAIN.x.shape[0], VALIDATION.x.shape[0]]
    assert padded.fused.params["first"]["kernel"].shape == alone.fused.params["first"]["kernel"].shape
    for index in range(len(SPECS)):
        assert_bitwise(padded, index, alone.state(index), alone.histories[index])


def test_a_variant_without_dropout_in_its_shapes_dropout_block_is_itself_alone():
    """A plain variant and a dropout one of the same shape share one block (one less to compile),
    and the plain one's numbers are bitwise those it has in a block of its own."""
    plain = VariantSpec((8, 8), seed=6)
    alone = run([plain])
    assert [(block.hidden_units, block.dropout) for block in alone.layout.blocks] == [((8, 8), False)]
    together = run([SPECS[3], plain])
    assert [(block.hidden_units, block.size, block.dropout) for block in together.layout.blocks] == [((8, 8), 2, True)]
    assert_bitwise(together, 1, alone.state(0), alone.histories[0])


def test_each_variants_initial_weights_are_create_train_states():
    """`initial_state` makes every shape's weights in one program, turn by turn over the seeds
    (here the shapes have different numbers of seeds, so the turns differ): each variant's weights
    must be the bits `create_train_state` gives the same shape and seed alone."""
    from imdb_jax.config import ModelConfig
    from imdb_jax.train.steps import create_train_state
    from imdb_jax.train.variants import _keys, initial_state, take_variant

    specs = [
        VariantSpec((8, 8), seed=5),
        VariantSpec((4,), seed=5),
        VariantSpec((8, 8), seed=7),
        VariantSpec((8, 8), dropout_rate=0.5, seed=5),
        VariantSpec((16,), seed=9),
    ]
    layout, members, _ = plan_layout(specs, NUM_WORDS)
    state = initial_state(specs, layout, members, 1)
    host = jax.tree_util.tree_map(lambda leaf: np.asarray(leaf)[0], jax.device_get(state.params))
    for slot in range(layout.slots):
        spec = specs[members[slot]]
        alone = create_train_state(
            _keys(spec.seed)[0], ModelConfig(num_words=NUM_WORDS, hidden_units=spec.hidden_units)
        )
        ours = take_variant(host, layout, slot)
        theirs = jax.tree_util.tree_map(np.asarray, alone.params)
        assert jax.tree_util.tree_structure(ours) == jax.tree_util.tree_structure(theirs)
        for a, b in zip(jax.tree_util.tree_leaves(ours), jax.tree_util.tree_leaves(theirs)):
            assert a.shape == b.shape and np.array_equal(a.view(np.uint32), b.view(np.uint32))
