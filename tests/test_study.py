"""The study: experiment definitions, study.json, the computed report, figures, the retrain, and
variant spec files."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import scipy.sparse as sp

from imdb_jax import Split, VariantSpec, load_specs, run_study
from imdb_jax.data.imdb import IMDbData
from imdb_jax.data.text import Vocabulary
from imdb_jax.errors import ImdbJaxError
from imdb_jax.study import EXPERIMENTS, conclusions, report_markdown, select_experiments, union, variant_summary

NUM_WORDS = 64


def synthetic_data(num_train: int = 120, num_test: int = 60, seed: int = 0) -> IMDbData:
    """Reviews whose label is told by which half of a 64-word vocabulary most of their words
    come from, plus noise words."""
    rng = np.random.default_rng(seed)

    def split(rows: int) -> Split:
        labels = rng.integers(0, 2, rows).astype(np.float32)
        indptr, indices = [0], []
        for label in labels:
            signal = rng.choice(NUM_WORDS // 2, 5, replace=False) + (NUM_WORDS // 2) * int(label)
            noise = rng.choice(NUM_WORDS, 3, replace=False)
            words = np.unique(np.concatenate([signal, noise]))
            indices.extend(words)
            indptr.append(len(indices))
        x = sp.csr_matrix((np.ones(len(indices), np.float32), indices, indptr), shape=(rows, NUM_WORDS))
        return Split(x, labels)

    vocabulary = Vocabulary(tuple(f"word{index}" for index in range(NUM_WORDS)))
    return IMDbData(split(num_train), split(num_test), vocabulary, source="synthetic")


# ---------------------------------------------------------------------------------------------
# Experiment definitions.


def test_experiments_are_the_seeds_thirteen_models():
    assert [spec.hidden_units for spec in EXPERIMENTS["units"]] == [(4,), (16,), (512,)]
    assert [spec.hidden_units for spec in EXPERIMENTS["layers"]] == [(16,), (16, 16), (16, 16, 16), (16, 16, 16, 16)]
    assert [spec.hidden_units for spec in EXPERIMENTS["epochs"]] == [(16, 16)]
    assert [(spec.l1, spec.l2) for spec in EXPERIMENTS["regularization"]] == [(0, 0), (0.001, 0), (0, 0.001)]
    assert [spec.dropout_rate for spec in EXPERIMENTS["dropout"]] == [0, 0.5]
    assert all(spec.hidden_units == (16, 16) for name in ("regularization", "dropout") for spec in EXPERIMENTS[name])
    assert sum(len(specs) for specs in EXPERIMENTS.values()) == 13


def test_all_trains_each_distinct_variant_once():
    specs, members = union(select_experiments("all"))
    # 13 models, of which 16 (units, layers) and 16-16 (layers, epochs, regularization, dropout) repeat.
    assert len(specs) == 9
    sixteen_sixteen = specs.index(VariantSpec((16, 16)))
    assert [name for name, indices in members.items() if sixteen_sixteen in indices] == [
        "layers",
        "epochs",
        "regularization",
        "dropout",
    ]
    assert [len(members[name]) for name in EXPERIMENTS] == [3, 4, 1, 3, 2]


def test_select_experiments_rejects_unknown_names_and_mixes_specs():
    with pytest.raises(ImdbJaxError, match="unknown experiment 'width'.*units, layers"):
        select_experiments(["units", "width"])
    chosen = select_experiments(["dropout", VariantSpec((8,)), "units"])
    assert list(chosen) == ["units", "dropout", "custom"]
    assert chosen["custom"] == (VariantSpec((8,)),)
    with pytest.raises(ImdbJaxError, match="no variants"):
        select_experiments([])


# ---------------------------------------------------------------------------------------------
# The report follows the numbers: hand-made histories where we choose the outcome.


def _history(val_loss, loss=None):
    val_loss = list(val_loss)
    loss = list(loss) if loss is not None else [0.5 - 0.02 * epoch for epoch in range(len(val_loss))]
    return {
        "loss": loss,
        "accuracy": [0.8] * len(val_loss),
        "val_loss": val_loss,
        "val_accuracy": [0.9 - value / 10 for value in val_loss],
        "diverged": [math.isnan(value) for value in val_loss],
    }


def _valley(best_epoch, best, epochs=6):
    """Validation losses falling to `best` at `best_epoch`, rising after."""
    return [best + 0.05 * abs(epoch - best_epoch) for epoch in range(1, epochs + 1)]


def _seeded(best_epoch, bests, loss=None):
    """One history per seed: the same valley, its floor at each of `bests`."""
    return [_history(_valley(best_epoch, value), loss) for value in bests]


def _summary(curves, experiments, seeds=1):
    """A study summary from {name: (spec, history or [history per seed])} and {experiment: [names]}."""
    names = list(curves)
    summary = {
        "settings": {
            "epochs": 6,
            "batch_size": 512,
            "seeds": seeds,
            "shuffle_seed": 0,
            "train_reviews": 15000,
            "validation_reviews": 10000,
        },
        "experiments": {
            experiment: [names.index(name) for name in members] for experiment, members in experiments.items()
        },
        "variants": [
            variant_summary(spec, name, history, [e for e, members in experiments.items() if name in members])
            for name, (spec, history) in curves.items()
        ],
        "retrain": {
            "variant": "16-16",
            "spec": VariantSpec((16, 16)).to_dict(),
            "epochs": 3,
            "train_reviews": 25000,
            "test_loss": 0.3,
            "test_accuracy": 0.88,
        },
        "wall_s": 1.0,
        "devices": ["cpu"],
    }
    summary["conclusions"] = conclusions(summary)
    return summary


def _given(found):
    """A comparison that must exist (not None)."""
    assert found is not None
    return found


SEED_EXPERIMENTS = {
    "units": ["4", "16", "512"],
    "layers": ["16", "16-16", "16-16-16"],
    "epochs": ["16-16"],
    "regularization": ["16-16", "16-16 l1=0.001", "16-16 l2=0.001"],
    "dropout": ["16-16", "16-16 dropout=0.5"],
}


def _seedlike(l1_best, l2_best, dropout_best_epoch, dropout_best):
    """The seed's experiments with one seed each."""
    curves = {
        "4": (VariantSpec((4,)), _history(_valley(5, 0.30), loss=[0.6 - 0.01 * e for e in range(6)])),
        "16": (VariantSpec((16,)), _history(_valley(3, 0.28))),
        "512": (VariantSpec((512,)), _history(_valley(1, 0.29), loss=[0.2 - 0.03 * e for e in range(6)])),
        "16-16": (VariantSpec((16, 16)), _history(_valley(4, 0.27))),
        "16-16-16": (VariantSpec((16, 16, 16)), _history(_valley(2, 0.285))),
        "16-16 l1=0.001": (VariantSpec((16, 16), l1=0.001), _history(_valley(6, l1_best))),
        "16-16 l2=0.001": (VariantSpec((16, 16), l2=0.001), _history(_valley(4, l2_best))),
        "16-16 dropout=0.5": (
            VariantSpec((16, 16), dropout_rate=0.5),
            _history(_valley(dropout_best_epoch, dropout_best)),
        ),
    }
    return _summary(curves, SEED_EXPERIMENTS)


def _three_seeds(units_16, l2, dropout_epochs):
    """The seed's experiments with three seeds each: `units_16` are the 16-unit model's three
    minimum validation losses (4 units: 0.300 ± 0.001, 512 units: 0.290 ± 0.001), `l2` the L2
    variant's (16-16: 0.270 ± 0.001), `dropout_epochs` the dropout variant's best epochs."""
    dropout = [_history(_valley(epoch, 0.2705 + 0.0005 * index)) for index, epoch in enumerate(dropout_epochs)]
    curves = {
        "4": (VariantSpec((4,)), _seeded(5, [0.299, 0.300, 0.301], loss=[0.6 - 0.01 * e for e in range(6)])),
        "16": (VariantSpec((16,)), _seeded(3, units_16)),
        "512": (VariantSpec((512,)), _seeded(1, [0.289, 0.290, 0.291], loss=[0.2 - 0.03 * e for e in range(6)])),
        "16-16": (
            VariantSpec((16, 16)),
            [_history(_valley(epoch, value)) for epoch, value in zip((3, 4, 4), (0.269, 0.270, 0.271))],
        ),
        "16-16-16": (VariantSpec((16, 16, 16)), _seeded(2, [0.284, 0.285, 0.286])),
        "16-16 l1=0.001": (VariantSpec((16, 16), l1=0.001), _seeded(6, [0.309, 0.310, 0.311])),
        "16-16 l2=0.001": (VariantSpec((16, 16), l2=0.001), _seeded(4, l2)),
        "16-16 dropout=0.5": (VariantSpec((16, 16), dropout_rate=0.5), dropout),
    }
    return _summary(curves, SEED_EXPERIMENTS, seeds=3)


def test_with_one_seed_the_report_ranks_but_claims_nothing():
    summary = _seedlike(l1_best=0.31, l2_best=0.26, dropout_best_epoch=6, dropout_best=0.275)
    report = report_markdown(summary)
    assert (
        "Width: 16 units had the lowest minimum validation loss (0.2800 at epoch 3), but with 1 seed the noise between runs is not measured"
        in report
    )
    assert "did best" not in report and "indistinguishable" not in report
    assert "512 units overfit soonest (mean validation loss lowest at epoch 1, rising after)" in report
    assert "4 units fit the training reviews least" in report
    assert "Depth: 2 hidden layers had the lowest minimum validation loss (0.2700 at epoch 4)" in report
    assert "3 hidden layers overfit soonest" in report
    assert "The 16-16 model's mean validation loss is lowest at epoch 4 (0.2700) and turns up after it" in report
    assert (
        "L2(0.001) gave a lower minimum validation loss (0.2600 vs 0.2700 without a penalty), with the noise unmeasured (1 seed)"
        in report
    )
    assert "L1(0.001) gave a not lower minimum validation loss (0.3100 vs 0.2700" in report
    assert "No penalty helped beyond the noise; L2(0.001) came closest." in report
    assert "dropout 0.5 moved the best epoch later, from 4 to 6, and gave a not lower minimum validation loss" in report
    assert "test accuracy 0.8800" in report
    assert summary["conclusions"]["units"]["clear_best"] is None


def test_a_lead_larger_than_the_noise_did_best():
    summary = _three_seeds(units_16=[0.279, 0.280, 0.281], l2=[0.259, 0.260, 0.261], dropout_epochs=[6, 6, 5])
    found = summary["conclusions"]["units"]
    assert found["best"] == "16" and found["clear_best"] is True and found["tied_with_best"] == []
    variant = summary["variants"][1]
    assert variant["stats"]["best_val_loss"]["mean"] == pytest.approx(0.280)
    assert variant["stats"]["best_val_loss"]["sd"] == pytest.approx(0.001)
    report = report_markdown(summary)
    # 512 units trails by 0.0100; the standard error of the difference is sqrt(2 * 0.001**2 / 3) = 0.00082.
    assert (
        "Width: 16 units did best (mean minimum validation loss 0.2800 ± 0.0010 over 3 seeds; mean curve lowest at epoch 3); "
        "its lead over 512 units is larger than the noise (Welch's t-test: 0.0100 vs 2 standard errors = 0.0016, p < 0.001)."
        in report
    )
    # 16-16 and its L2 variant share shape and seeds: the paired t-test on the per-seed differences.
    assert (
        "L2(0.001) lowered the minimum validation loss (0.2600 ± 0.0010 vs 0.2700 ± 0.0010 without a penalty; "
        "paired t-test over 3 seeds: 0.0100 vs 2 standard errors" in report
    )
    assert "L1(0.001) raised the minimum validation loss" in report
    assert "L2(0.001) helped; L2(0.001) most." in report
    assert summary["conclusions"]["regularization"]["helped"] == ["L2(0.001)"]
    # 16-16's best epochs are 3, 4, 4 and dropout's 6, 6, 5: later beyond the noise.
    assert "dropout 0.5 moved the best epoch later, from 3.7 to 5.7 on average" in report
    # Welch's test would call dropout's 0.0010 indistinguishable (2 * sqrt(0.0005**2/3 + 0.001**2/3) = 0.0013), but
    # seed by seed dropout is higher by 0.0015, 0.0010, 0.0005: paired, 2 standard errors are 0.0006.
    assert (
        "raised the minimum validation loss (0.2710 ± 0.0005 vs 0.2700 ± 0.0010 without dropout; "
        "paired t-test over 3 seeds: 0.0010 vs 2 standard errors = 0.0006, p = 0.074)" in report
    )
    assert "| 16 | 3/3 | 3.0 ± 0.0 | 0.2800 ± 0.0010 | 0.8720 ± 0.0001 |" in report


def test_a_lead_within_the_noise_is_indistinguishable():
    summary = _three_seeds(units_16=[0.282, 0.275, 0.289], l2=[0.262, 0.270, 0.276], dropout_epochs=[3, 5, 4])
    found = summary["conclusions"]["units"]
    # 16 units: mean 0.282 ± 0.007; 512 units: 0.290 ± 0.001. Lead 0.008 < 2 * sqrt(0.007**2/3 + 0.001**2/3) = 0.0082.
    assert found["best"] == "16" and found["clear_best"] is False
    assert [row["variant"] for row in found["tied_with_best"]] == ["512"]
    report = report_markdown(summary)
    assert "Width: 16 units and 512 units are indistinguishable at 3 seeds: 16 units has the lowest mean" in report
    assert (
        "its lead over 512 units is within the noise (Welch's t-test: 0.0080 vs 2 standard errors = 0.0082, p = 0.184)"
        in report
    )
    assert "did best" not in report.split("## units")[1].split("## layers")[0]
    assert "L2(0.001) did not change the minimum validation loss beyond the noise (0.2693 ± 0.0070" in report
    assert "No penalty helped beyond the noise; L2(0.001) came closest." in report
    assert (
        "dropout 0.5 left the best epoch where it was within the noise (mean 3.7 vs 4.0; paired t-test over 3 seeds:"
        in report
    )


def test_the_rule_is_welch_two_standard_errors():
    from imdb_jax.study import difference, spread

    a, b = spread([1.0, 2.0, 3.0]), spread([4.0, 4.5, 5.0])
    assert a == {"mean": 2.0, "sd": 1.0, "min": 1.0, "max": 3.0, "n": 3}
    found = _given(difference(a, b))
    assert found["difference"] == -2.5 and found["se"] == pytest.approx(math.sqrt(1 / 3 + 0.25 / 3))
    assert found["verdict"] == "lower"  # 2.5 > 2 * 0.645
    assert _given(difference(spread([1.0, 3.0]), spread([2.5, 3.5])))["verdict"] == "indistinguishable"
    assert _given(difference(spread([1.0]), spread([2.0])))["verdict"] == "unmeasured"
    assert difference(spread([None, None]), spread([2.0])) is None


# ---------------------------------------------------------------------------------------------
# Paired or Welch: which test each comparison used.


def test_paired_t_test_on_per_seed_differences_matches_scipy():
    from scipy import stats

    from imdb_jax.study import difference, spread
    from imdb_jax.study.statistics import PAIRED, WELCH, paired_difference

    a, b = [1.0, 2.0, 3.0, 2.5], [0.5, 1.6, 2.4, 2.05]  # each seed of a is 0.4-0.6 above the same seed of b
    paired = _given(paired_difference(a, b))
    statistic, pvalue = np.asarray(tuple(stats.ttest_rel(a, b))[:2], np.float64)
    assert paired["test"] == PAIRED and paired["n"] == 4 and paired["df"] == 3
    assert paired["difference"] == pytest.approx(np.mean(np.subtract(a, b)))
    assert paired["difference"] / paired["se"] == pytest.approx(statistic)
    assert paired["p"] == pytest.approx(pvalue)
    assert paired["verdict"] == "higher"
    # The same numbers as independent samples: the spread between seeds hides the difference.
    welch = _given(difference(spread(a), spread(b)))
    statistic, pvalue = np.asarray(tuple(stats.ttest_ind(a, b, equal_var=False))[:2], np.float64)
    assert welch["test"] == WELCH and welch["verdict"] == "indistinguishable"
    assert welch["difference"] / welch["se"] == pytest.approx(statistic)
    assert welch["p"] == pytest.approx(pvalue)
    # Only seeds with a value on both sides pair up; one pair measures no noise.
    assert paired_difference([1.0, None, 3.0], [0.5, 2.0, None]) == {
        "test": PAIRED,
        "difference": 0.5,
        "se": None,
        "df": None,
        "p": None,
        "n": 1,
        "verdict": "unmeasured",
    }
    assert paired_difference([None], [1.0]) is None
    same = _given(paired_difference([0.3, 0.4], [0.3, 0.4]))
    assert same["verdict"] == "indistinguishable" and same["p"] == 1.0


def test_same_shape_and_seeds_pair_up_other_comparisons_are_welch():
    from imdb_jax.study.conclusions import compare
    from imdb_jax.study.statistics import PAIRED, WELCH

    sixteen = variant_summary(VariantSpec((16, 16)), "16-16", _seeded(3, [0.269, 0.270, 0.271]), ["x"])
    l2 = variant_summary(VariantSpec((16, 16), l2=0.001), "l2", _seeded(3, [0.268, 0.269, 0.270]), ["x"])
    narrow = variant_summary(VariantSpec((16,)), "16", _seeded(3, [0.268, 0.269, 0.270]), ["x"])
    later = variant_summary(
        VariantSpec((16, 16), l2=0.001, seed=5), "l2 seed=5", _seeded(3, [0.268, 0.269, 0.270]), ["x"]
    )
    paired = _given(compare(l2, sixteen))
    # Lower by 0.001 on every seed: real when paired, though within Welch's noise (2 * 0.00082).
    assert paired["test"] == PAIRED and paired["n"] == 3 and paired["verdict"] == "lower"
    welch = _given(compare(narrow, sixteen))
    assert welch["test"] == WELCH and welch["verdict"] == "indistinguishable"
    assert later["seeds"] == [5, 6, 7] and _given(compare(later, sixteen))["test"] == WELCH


def test_every_sentence_with_a_margin_names_its_test():
    import re

    for summary in (
        _three_seeds(units_16=[0.279, 0.280, 0.281], l2=[0.259, 0.260, 0.261], dropout_epochs=[6, 6, 5]),
        _three_seeds(units_16=[0.282, 0.275, 0.289], l2=[0.262, 0.270, 0.276], dropout_epochs=[3, 5, 4]),
        _slowing(plain=True),
    ):
        report = report_markdown(summary)
        margins = re.findall(r"[^(;,]*: \d\.\d{4} vs 2 standard errors = \d\.\d{4}, p [<=] \d\.\d{3}", report)
        assert len(margins) == report.count("standard errors =") >= 8
        assert all(
            re.match(r" ?(Welch's t-test|paired t-test over \d seeds)$", margin.split(":")[0]) for margin in margins
        ), margins
    units = report_markdown(
        _three_seeds(units_16=[0.279, 0.280, 0.281], l2=[0.259, 0.260, 0.261], dropout_epochs=[6, 6, 5])
    )
    units = units.split("## units")[1].split("## layers")[0]
    assert "Welch's t-test" in units and "paired" not in units  # widths differ: their seeds do not pair up


# ---------------------------------------------------------------------------------------------
# The penalty verdict and overfitting, on what the penalty does not inflate.

SEED_SHIFT = (-0.004, -0.001, 0.002, 0.003)  # each seed's offset, shared by every variant (paired noise)


def _climb(floor, best_epoch, end, epochs=20):
    """Falls to `floor` at `best_epoch`, then climbs to `end` at the last epoch."""
    start = floor + 0.3
    return [
        start + (floor - start) * (epoch - 1) / max(best_epoch - 1, 1)
        if epoch <= best_epoch
        else floor + (end - floor) * (epoch - best_epoch) / (epochs - best_epoch)
        for epoch in range(1, epochs + 1)
    ]


def _penalised_seeds(floor, best_epoch, end, variant, plain, penalty=0.0, growth=0.0):
    """Four seeds of one variant: the plain cross-entropy `_climb`s (each seed shifted by
    SEED_SHIFT, and its climb after the minimum by a jitter of its own), the validation loss adds
    a penalty growing linearly by `growth`; accuracy follows the plain cross-entropy."""
    histories = []
    for seed, shift in enumerate(SEED_SHIFT):
        jitter = variant * (0.0004, -0.0003, 0.0001, -0.0002)[seed]  # mean 0 over the seeds
        climb = _climb(floor, best_epoch, end)
        cross = [value + shift + (jitter if epoch > best_epoch else 0.0) for epoch, value in enumerate(climb, 1)]
        penalties = [penalty + growth * epoch / (len(cross) - 1) for epoch in range(len(cross))]
        history = {
            "loss": [0.5 - 0.02 * epoch for epoch in range(len(cross))],
            "accuracy": [0.8] * len(cross),
            "val_loss": [value + extra for value, extra in zip(cross, penalties)],
            "val_accuracy": [0.9 - value / 10 for value in cross],
            "diverged": [False] * len(cross),
        }
        if plain:
            history["val_cross_entropy"] = cross
        histories.append(history)
    return histories


def _slowing(plain, baseline_end=0.564):
    """The seed's 20-epoch regularisation and dropout experiments with 4 seeds: 16-16 lowest at
    epoch 4 and climbing to `baseline_end`; L2 lower in plain cross-entropy but higher with its
    penalty, ending at 0.466 with it; L1 no better; dropout ending at 0.538."""
    curves = {
        "16-16": (VariantSpec((16, 16)), _penalised_seeds(0.28, 4, baseline_end, 1, plain)),
        "16-16 l1=0.001": (VariantSpec((16, 16), l1=0.001), _penalised_seeds(0.285, 5, 0.45, 2, plain, penalty=0.3)),
        "16-16 l2=0.001": (
            VariantSpec((16, 16), l2=0.001),
            _penalised_seeds(0.27, 6, 0.40, 3, plain, penalty=0.05, growth=0.016),
        ),
        "16-16 dropout=0.5": (VariantSpec((16, 16), dropout_rate=0.5), _penalised_seeds(0.275, 6, 0.538, 4, plain)),
    }
    experiments = {
        "regularization": ["16-16", "16-16 l1=0.001", "16-16 l2=0.001"],
        "dropout": ["16-16", "16-16 dropout=0.5"],
    }
    summary = _summary(curves, experiments, seeds=4)
    summary["settings"]["epochs"] = 20
    return summary


def test_the_penalty_verdict_comes_from_the_plain_cross_entropy():
    summary = _slowing(plain=True)
    found = summary["conclusions"]["regularization"]
    l1, l2 = found["penalty"]["rows"]
    # With its penalty, L2's validation loss is higher than 16-16's; without it, lower.
    assert [row["val_loss"]["verdict"] for row in found["compared"]] == ["higher", "higher"]
    assert l2["judged_by"] == "cross-entropy" and l2["cross_entropy_change"]["verdict"] == "lower"
    assert l2["cross_entropy"]["mean"] == pytest.approx(0.27)
    assert l2["penalty_at_best"] == pytest.approx(0.05 + 0.016 * 5 / 19)
    assert l1["cross_entropy_change"]["verdict"] == "higher" and l1["helped"] is False
    assert found["helped"] == ["L2(0.001)"]
    report = report_markdown(summary)
    section = report.split("## regularization")[1].split("## dropout")[0]
    assert "the validation loss here is Keras' number, which includes the penalty" in section
    # L2's minimum: 0.27 plain + 0.05 + 0.016 * 5 / 19 penalty at epoch 6.
    assert (
        "L2(0.001) raised the minimum validation loss (0.3242 ± 0.0032 vs 0.2800 ± 0.0032 without a penalty; paired t-test over 4 seeds:"
        in section
    )
    assert (
        "L2(0.001): minimum validation cross-entropy 0.2700 ± 0.0032 vs 0.2800 ± 0.0032 without a penalty, lower (paired t-test over 4 seeds:"
        in section
    )
    assert "best validation accuracy 0.8730 ± 0.0003 vs 0.8720 ± 0.0003, higher (paired t-test over 4 seeds:" in section
    assert "the penalty adds 0.0542 to its validation loss at its best epoch" in section
    assert (
        "L2(0.001) helped; L2(0.001) most. This verdict is drawn from the plain validation cross-entropy, not from the penalised loss."
        in section
    )
    assert "min val cross-entropy (no penalty)" in section and "| 16-16 l2=0.001 | 4/4 |" in section


def test_without_a_recorded_cross_entropy_the_penalty_verdict_uses_accuracy():
    summary = _slowing(plain=False)
    found = summary["conclusions"]["regularization"]
    assert all(row["judged_by"] == "accuracy" and row["cross_entropy"] is None for row in found["penalty"]["rows"])
    assert found["helped"] == ["L2(0.001)"]  # higher validation accuracy beyond the noise
    section = report_markdown(summary).split("## regularization")[1].split("## dropout")[0]
    assert (
        "L2(0.001): plain cross-entropy not recorded in these histories; best validation accuracy 0.8730 ± 0.0003 vs 0.8720 ± 0.0003, higher"
        in section
    )
    assert "This verdict is drawn from the validation accuracy (the plain cross-entropy was not recorded)" in section
    # Overfitting is then judged on the penalised loss, and the report says which curve it used.
    assert (
        "L2(0.001) slowed overfitting: its mean validation loss (with the penalty, the plain cross-entropy not recorded) rose"
        in section
    )
    assert "plain validation cross-entropy rose" not in section
    dropout = report_markdown(summary).split("## dropout")[1]
    assert "Dropout 0.5 slowed overfitting: its mean validation loss rose" in dropout  # no penalty to mention


def test_the_report_says_whether_l2_and_dropout_slowed_overfitting():
    summary = _slowing(plain=True)
    dropout = summary["conclusions"]["dropout"]["compared"][0]["overfitting"]
    assert dropout["curve"] == "val_loss" and dropout["baseline_rises"] and dropout["slowed"] is True
    assert dropout["last"]["mean"] == pytest.approx(0.538)
    assert dropout["rise_change"]["test"] == "paired t-test" and dropout["rise_change"]["verdict"] == "lower"
    l1, l2 = (row["overfitting"] for row in summary["conclusions"]["regularization"]["compared"])
    assert l2["curve"] == "val_cross_entropy" and l2["slowed"] is True and l1["slowed"] is True
    report = report_markdown(summary)
    assert (
        "L2(0.001) slowed overfitting: its mean plain validation cross-entropy rose 0.1300 after its minimum, to 0.4000 at "
        "epoch 20, against 0.2840, to 0.5640, without a penalty (rise after the minimum, paired t-test over 4 seeds:"
        in report
    )
    assert "at epoch 20 its plain validation cross-entropy is lower (paired t-test over 4 seeds:" in report
    assert (
        "Dropout 0.5 slowed overfitting: its mean validation loss rose 0.2630 after its minimum, to 0.5380 at epoch 20, "
        "against 0.2840, to 0.5640, without dropout (rise after the minimum, paired t-test over 4 seeds:" in report
    )
    # 16-16 climbing as far as dropout (0.263, to 0.543): the same rise is no slowing.
    summary = _slowing(plain=True, baseline_end=0.543)
    assert "Dropout 0.5 did not slow overfitting beyond the noise" in report_markdown(summary)
    assert summary["conclusions"]["dropout"]["compared"][0]["overfitting"]["slowed"] is False


def test_no_overfitting_to_slow_before_the_baseline_turns_up():
    curves = {
        "16-16": (VariantSpec((16, 16)), _seeded(6, [0.269, 0.270, 0.271])),  # still falling at the last epoch
        "16-16 dropout=0.5": (VariantSpec((16, 16), dropout_rate=0.5), _seeded(6, [0.279, 0.280, 0.281])),
    }
    summary = _summary(curves, {"dropout": list(curves)}, seeds=3)
    overfit = summary["conclusions"]["dropout"]["compared"][0]["overfitting"]
    assert overfit["baseline_rises"] is False and overfit["slowed"] is None
    assert (
        "Without dropout, the validation loss did not climb back after its minimum within 6 epochs: no overfitting for dropout 0.5 to slow yet."
        in report_markdown(summary)
    )


# ---------------------------------------------------------------------------------------------
# The best capacity overall, against the seed's 16-16.


def _capacities(bests_512):
    curves = {
        "4": (VariantSpec((4,)), _seeded(5, [0.299, 0.300, 0.301])),
        "16": (VariantSpec((16,)), _seeded(3, [0.279, 0.280, 0.281])),
        "512": (VariantSpec((512,)), _seeded(1, bests_512)),
        "16-16": (VariantSpec((16, 16)), _seeded(4, [0.269, 0.270, 0.271])),
        "16-16-16": (VariantSpec((16, 16, 16)), _seeded(2, [0.284, 0.285, 0.286])),
    }
    return _summary(curves, {"units": ["4", "16", "512"], "layers": ["16", "16-16", "16-16-16"]}, seeds=3)


def test_the_best_capacity_overall_against_the_seeds_16_16():
    clear = _capacities([0.249, 0.250, 0.251])
    found = clear["conclusions"]["capacity"]
    assert found["best"] == "512" and found["against"] == "16-16" and not found["is_seed_model"]
    assert found["change"]["test"] == "Welch's t-test" and found["change"]["verdict"] == "lower"
    assert found["candidates"] == ["4", "16", "512", "16-16", "16-16-16"]
    report = report_markdown(clear)
    assert (
        "## Capacity overall\n\nOf the widths and depths trained (4, 16, 512, 16-16, 16-16-16), 512 has the lowest mean "
        "minimum validation loss 0.2500 ± 0.0010 over 3 seeds; it is lower than the seed's 16-16 (0.2700 ± 0.0010) "
        "beyond the noise (Welch's t-test: 0.0200 vs 2 standard errors = 0.0016, p < 0.001)." in report
    )
    tied = report_markdown(_capacities([0.262, 0.268, 0.274]))
    assert (
        "512 has the lowest mean minimum validation loss 0.2680 ± 0.0060 over 3 seeds; it is indistinguishable from the seed's 16-16 (0.2700 ± 0.0010; Welch's t-test: 0.0020 vs 2 standard errors = 0.0070"
        in tied
    )
    seed_best = _capacities([0.289, 0.290, 0.291])
    assert (
        seed_best["conclusions"]["capacity"]["is_seed_model"]
        and seed_best["conclusions"]["capacity"]["against"] == "16"
    )
    assert (
        "the seed's own 16-16 has the lowest mean minimum validation loss 0.2700 ± 0.0010 over 3 seeds; its lead over the runner-up, 16 (0.2800 ± 0.0010), is larger than the noise (Welch's t-test"
        in report_markdown(seed_best)
    )
    one_seed = _seedlike(l1_best=0.31, l2_best=0.26, dropout_best_epoch=6, dropout_best=0.275)
    assert "with 1 seed it cannot be told from the runner-up, 16 (0.2800)." in report_markdown(one_seed)
    assert (
        "capacity" not in _summary({"8": (VariantSpec((8,)), _history([0.5, 0.4]))}, {"custom": ["8"]})["conclusions"]
    )


# ---------------------------------------------------------------------------------------------
# Figures: embedded where the report speaks of them, titles inside, dots explained, accuracy curves.


def test_the_report_embeds_each_figure_in_its_section():
    summary = _three_seeds(units_16=[0.279, 0.280, 0.281], l2=[0.259, 0.260, 0.261], dropout_epochs=[6, 6, 5])
    assert "](" not in report_markdown(summary)  # no figures written, none embedded
    from imdb_jax.study.figures import CURVE_FIGURES, experiment_figures

    summary["figures"] = [
        name for experiment in summary["experiments"] for name in experiment_figures(experiment)
    ] + list(CURVE_FIGURES)
    report = report_markdown(summary)
    sections = {part.split("\n", 1)[0]: part for part in report.split("\n## ")[1:]}
    for experiment in summary["experiments"]:
        assert f"![{experiment}: mean validation loss per epoch](val_loss_{experiment}.png)" in sections[experiment]
        assert (
            f"![{experiment}: mean validation accuracy per epoch](val_accuracy_{experiment}.png)"
            in sections[experiment]
        )
    assert "(depth.png)" in sections["layers"] and "(depth.png)" not in sections["units"]
    assert (
        "![training and validation accuracy of every variant](train_vs_val_accuracy.png)"
        in sections["Every variant's curves"]
    )
    assert (
        "![training and validation loss of every variant](train_vs_val_loss.png)" in sections["Every variant's curves"]
    )
    assert "the dot on each curve marks its best epoch, where its mean validation loss is lowest" in report
    assert all(f"]({name})" in report for name in summary["figures"])


def test_figures_keep_their_titles_inside_explain_the_dots_and_draw_accuracy(monkeypatch, tmp_path):
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    import imdb_jax.plots as plots
    from imdb_jax.study import write_figures
    from imdb_jax.study.figures import DOT

    drawn = {}
    original = plots.save_figure

    def keep(figure, path):
        drawn[path.name] = figure
        return original(figure, path)

    monkeypatch.setattr(plots, "save_figure", keep)
    summary = _slowing(plain=True)
    write_figures(summary, tmp_path)
    for name, figure in drawn.items():
        renderer = FigureCanvasAgg(figure).get_renderer()
        figure.draw(renderer)
        box = figure.bbox
        titles = [ax.title for ax in figure.axes] + ([figure._suptitle] if figure._suptitle else [])
        for title in titles:
            if title.get_text():
                extent = title.get_window_extent(renderer)
                assert box.x0 <= extent.x0 and extent.x1 <= box.x1 and extent.y1 <= box.y1, (name, title.get_text())
    for experiment in ("regularization", "dropout"):
        for key in ("loss", "accuracy"):
            ax = drawn[f"val_{key}_{experiment}.png"].axes[0]
            labels = ax.get_legend_handles_labels()[1]
            assert DOT in labels and ax.get_ylabel().startswith(f"validation {key}")
    regularization = drawn["val_loss_regularization.png"].axes[0]
    assert "16-16 l2=0.001 without the penalty" in regularization.get_legend_handles_labels()[1]
    dashed = next(
        line for line in regularization.get_lines() if line.get_label() == "16-16 l2=0.001 without the penalty"
    )
    l2 = summary["variants"][2]
    np.testing.assert_allclose(dashed.get_ydata(), l2["history"]["val_cross_entropy"])
    accuracy = drawn["train_vs_val_accuracy.png"]
    assert [ax.get_title() for ax in accuracy.axes] == [variant["name"] for variant in summary["variants"]]
    validation = next(line for line in accuracy.axes[2].get_lines() if line.get_label() == "validation")
    np.testing.assert_allclose(validation.get_ydata(), l2["history"]["val_accuracy"])
    curve = next(
        line
        for line in drawn["val_accuracy_dropout.png"].axes[0].get_lines()
        if line.get_label() == "16-16 dropout=0.5"
    )
    np.testing.assert_allclose(curve.get_ydata(), summary["variants"][3]["history"]["val_accuracy"])


def test_report_handles_diverged_variants_and_no_overfitting():
    curves = {
        "8": (VariantSpec((8,)), _history([0.5, 0.4, 0.3, 0.25])),  # still falling at the end
        "8 lr=1e+30": (VariantSpec((8,), learning_rate=1e30), _history([0.6, math.nan, math.nan, math.nan])),
        "8 lr=10": (VariantSpec((8,), learning_rate=10.0), _history([math.nan] * 4)),
    }
    summary = _summary(curves, {"custom": list(curves)})
    assert summary["variants"][1]["diverged_epoch"] == 2 and summary["variants"][1]["best_epoch"] == 1
    assert summary["variants"][2]["best_epoch"] is None and summary["variants"][2]["best_val_loss"] is None
    report = report_markdown(summary)
    assert "Ranking: 8 had the lowest minimum validation loss (0.2500 at epoch 4)" in report
    assert "still at its lowest at the last epoch (4): no overfitting yet" in report
    assert "Diverged (on at least one seed): 8 lr=1e+30, 8 lr=10." in report
    assert "| 8 lr=10 | 0/1 | n/a | n/a |" in report


def test_a_seed_that_diverges_is_left_out_of_the_statistics():
    histories = [_history([0.5, 0.4, 0.3]), _history([0.5, math.nan, math.nan]), _history([0.6, 0.45, 0.35])]
    variant = variant_summary(VariantSpec((8,), seed=5), "8", histories, ["custom"])
    assert variant["seeds"] == [5, 6, 7] and variant["diverged_seeds"] == [6] and variant["diverged_epoch"] == 2
    assert variant["stats"]["best_val_loss"]["n"] == 3  # seed 6 has a best epoch (1) before it diverged
    assert variant["stats"]["best_val_loss"]["mean"] == pytest.approx((0.3 + 0.5 + 0.35) / 3)
    assert variant["history"]["val_loss"] == pytest.approx([(0.5 + 0.5 + 0.6) / 3, 0.425, 0.325])


# ---------------------------------------------------------------------------------------------
# A whole study on synthetic data, end to end.

STUDY = {
    "widths": [VariantSpec((4,), seed=1), VariantSpec((8, 8), learning_rate=3e-3)],
    "penalties": [VariantSpec((8, 8), learning_rate=3e-3), VariantSpec((8, 8), l2=0.01, learning_rate=3e-3)],
}
EPOCHS = 4


@pytest.fixture(scope="module")
def synthetic_study(tmp_path_factory):
    """STUDY with 2 seeds per variant; every study.json written while it ran is kept."""
    import imdb_jax.study.runner as runner

    output = tmp_path_factory.mktemp("study")
    data = synthetic_data()
    snapshots = []
    original = runner.write_json

    def keep(path, value, **options):
        written = original(path, value, **options)
        snapshots.append(json.loads(written.read_text()))
        return written

    runner.write_json = keep
    try:
        result = run_study(
            STUDY, data, output_dir=output, validation=40, epochs=EPOCHS, batch_size=32, seeds=2, progress=False
        )
    finally:
        runner.write_json = original
    return result, data, snapshots


def test_study_json_holds_every_variant_seed_and_epoch(synthetic_study):
    result, _, _ = synthetic_study
    stored = json.loads((result.output_dir / "study.json").read_text())
    assert stored["status"] == "done" and stored["settings"]["seeds"] == 2
    assert [variant["name"] for variant in stored["variants"]] == ["4 seed=1", "8-8 lr=0.003", "8-8 l2=0.01 lr=0.003"]
    assert stored["experiments"] == {"widths": [0, 1], "penalties": [1, 2]}
    assert [variant["experiments"] for variant in stored["variants"]] == [
        ["widths"],
        ["widths", "penalties"],
        ["penalties"],
    ]
    assert stored["noise"]["varied_by_seeds"] == ["initial weights", "dropout masks"]
    assert "data order (shuffle_seed)" in stored["noise"]["shared"] and "2 standard errors" in stored["noise"]["rule"]
    for variant, spec in zip(stored["variants"], result.specs):
        assert VariantSpec.from_dict(variant["spec"]) == spec
        assert variant["seeds"] == [spec.seed, spec.seed + 1] and len(variant["histories"]) == 2
        minima = []
        for history, figures in zip(variant["histories"], variant["per_seed"]):
            assert all(len(values) == EPOCHS for values in history.values())
            assert figures["best_epoch"] == int(np.argmin(history["val_loss"])) + 1
            assert figures["best_val_loss"] == pytest.approx(min(history["val_loss"]))
            minima.append(min(history["val_loss"]))
        assert variant["stats"]["best_val_loss"]["mean"] == pytest.approx(np.mean(minima))
        assert variant["stats"]["best_val_loss"]["sd"] == pytest.approx(np.std(minima, ddof=1))
        assert variant["best_val_loss"] == variant["stats"]["best_val_loss"]["mean"]
        mean_curve = np.mean([history["val_loss"] for history in variant["histories"]], axis=0)
        np.testing.assert_allclose(variant["history"]["val_loss"], mean_curve, rtol=1e-12)
        assert variant["best_epoch"] == int(np.argmin(mean_curve)) + 1
        assert {"mean", "sd", "min", "max", "n"} <= set(variant["stats"]["val_accuracy_at_best"])
    assert stored["settings"]["train_reviews"] == 80 and stored["settings"]["validation_reviews"] == 40
    # Merged: every seed of every variant in one run.
    assert len(stored["runs"]) == 1 and stored["runs"][0]["trained"] == 6
    run = stored["runs"][0]
    assert run["compile_s"] > 0 and run["wall_s"] >= run["compile_s"]
    assert stored["devices"]


def test_each_seed_is_the_variant_trained_alone_with_that_seed(synthetic_study):
    from imdb_jax import fit

    result, data, _ = synthetic_study
    stored = json.loads((result.output_dir / "study.json").read_text())
    train, validation = data.split_validation(40)
    variant = stored["variants"][0]  # "4 seed=1": seeds 1 and 2
    spec = VariantSpec.from_dict(variant["spec"])
    _, history = fit(
        spec.config(NUM_WORDS), train, validation, epochs=EPOCHS, batch_size=32, seed=2, shuffle_seed=0, progress=False
    )
    # Bitwise: the same numbers, not close ones.
    for key in ("loss", "accuracy", "val_loss", "val_accuracy", "diverged"):
        assert variant["histories"][1][key] == history[key], key
    assert not np.allclose(variant["histories"][0]["val_loss"], history["val_loss"])  # seed 1 differs


def test_study_json_is_written_after_every_epoch(synthetic_study):
    result, _, snapshots = synthetic_study
    running = [snapshot for snapshot in snapshots if snapshot["status"] == "running"]
    assert [snapshot["epochs_done"]["epochs"] for snapshot in running] == list(range(1, EPOCHS + 1))
    for epochs, snapshot in enumerate(running, 1):
        assert all(
            len(history["val_loss"]) == epochs for variant in snapshot["variants"] for history in variant["histories"]
        )
    assert snapshots[-1]["status"] == "done"
    assert not [path for path in result.output_dir.iterdir() if path.name.endswith(".tmp")]


def test_study_report_matches_the_json(synthetic_study):
    result, _, _ = synthetic_study
    stored = json.loads((result.output_dir / "study.json").read_text())
    report = (result.output_dir / "report.md").read_text()
    best = min(stored["variants"], key=lambda variant: variant["best_val_loss"])
    assert stored["best_variant"] == best["name"]
    for experiment in stored["experiments"]:
        found = stored["conclusions"][experiment]
        winner = min(
            (stored["variants"][index] for index in stored["experiments"][experiment]),
            key=lambda variant: variant["best_val_loss"],
        )
        assert found["best"] == winner["name"]
        stats = winner["stats"]["best_val_loss"]
        figures = f"mean minimum validation loss {stats['mean']:.4f} ± {stats['sd']:.4f} over 2 seeds"
        if found["clear_best"]:
            assert f"Ranking: {winner['name']} did best ({figures}" in report
        else:
            assert f"are indistinguishable at 2 seeds: {winner['name']} has the lowest mean ({figures}" in report
    for variant in stored["variants"]:
        stats = variant["stats"]
        assert f"| {variant['name']} | 2/2 | " in report
        assert f"| {stats['best_val_loss']['mean']:.4f} ± {stats['best_val_loss']['sd']:.4f} |" in report


def test_study_retrains_the_best_variant_on_all_reviews(synthetic_study):
    from imdb_jax import load_model

    result, data, _ = synthetic_study
    stored = json.loads((result.output_dir / "study.json").read_text())
    best = next(variant for variant in stored["variants"] if variant["name"] == stored["best_variant"])
    retrain = stored["retrain"]
    assert retrain["variant"] == best["name"] and retrain["epochs"] == best["best_epoch"]
    assert retrain["train_reviews"] == 120 and len(retrain["history"]["loss"]) == best["best_epoch"]
    spec = VariantSpec.from_dict(best["spec"])
    saved = load_model(retrain["model_dir"])
    assert saved.config == spec.config(NUM_WORDS)
    # Trained on all 120 reviews for the best epoch count: 4 batches of 32 per epoch (the study's
    # 80 reviews would make 3).
    assert int(saved.state.step) == 4 * best["best_epoch"]
    # The saved weights are the retrained state's, and its test figures are theirs, recomputed in
    # NumPy (float64) rather than by the code that produced them.
    for name, layer in result.retrained.params.items():
        for part, value in layer.items():
            assert np.array_equal(np.asarray(saved.state.params[name][part]), np.asarray(value)), (name, part)
    params = {
        name: {part: np.asarray(value, np.float64) for part, value in layer.items()}
        for name, layer in saved.state.params.items()
    }
    hidden = data.test.x.toarray().astype(np.float64)
    for layer in range(len(spec.hidden_units)):
        hidden = np.maximum(hidden @ params[f"hidden_{layer}"]["kernel"] + params[f"hidden_{layer}"]["bias"], 0.0)
    logits = hidden @ params["output"]["kernel"][:, 0] + params["output"]["bias"][0]
    labels = np.asarray(data.test.y, np.float64)
    kernels = [params[f"hidden_{layer}"]["kernel"] for layer in range(len(spec.hidden_units))]
    penalty = spec.l1 * sum(np.abs(kernel).sum() for kernel in kernels) + spec.l2 * sum(
        (kernel**2).sum() for kernel in kernels
    )
    assert retrain["test_accuracy"] == pytest.approx(np.mean((logits > 0) == (labels == 1)), abs=1e-12)
    assert retrain["test_loss"] == pytest.approx(
        np.mean(np.logaddexp(0.0, logits) - labels * logits) + penalty, rel=1e-5
    )
    assert saved.metrics["test_accuracy"] == retrain["test_accuracy"]


def test_study_figures_are_pngs(synthetic_study):
    result, _, _ = synthetic_study
    figures = result.summary["figures"]
    assert sorted(figures) == [
        "train_vs_val_accuracy.png",
        "train_vs_val_loss.png",
        "val_accuracy_penalties.png",
        "val_accuracy_widths.png",
        "val_loss_penalties.png",
        "val_loss_widths.png",
    ]
    for name in figures:
        data = (result.output_dir / name).read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 5000


def test_figures_draw_a_band_from_the_lowest_to_the_highest_seed(monkeypatch, tmp_path):
    from matplotlib.axes import Axes

    from imdb_jax.study import write_figures

    summary = _three_seeds(units_16=[0.279, 0.280, 0.281], l2=[0.259, 0.260, 0.261], dropout_epochs=[6, 6, 5])
    bands = []
    original = Axes.fill_between

    def record(self, x, low, high, **options):
        bands.append((np.asarray(low), np.asarray(high)))
        return original(self, x, low, high, **options)

    monkeypatch.setattr(Axes, "fill_between", record)
    paths = write_figures(summary, tmp_path)
    assert [path.name for path in paths] == [
        "val_loss_units.png",
        "val_loss_layers.png",
        "val_loss_epochs.png",
        "val_loss_regularization.png",
        "val_loss_dropout.png",
        "val_accuracy_units.png",
        "val_accuracy_layers.png",
        "val_accuracy_epochs.png",
        "val_accuracy_regularization.png",
        "val_accuracy_dropout.png",
        "train_vs_val_loss.png",
        "train_vs_val_accuracy.png",
        "depth.png",
    ]
    assert all(path.read_bytes().startswith(b"\x89PNG") for path in paths)
    sixteen = summary["variants"][1]
    low, high = bands[1]  # the units figure's second curve: 16 units
    np.testing.assert_allclose(low, np.min([history["val_loss"] for history in sixteen["histories"]], axis=0))
    np.testing.assert_allclose(high, np.max([history["val_loss"] for history in sixteen["histories"]], axis=0))


def test_runs_per_experiment_train_each_shared_variant_once(tmp_path):
    data = synthetic_data()
    options = dict(validation=40, epochs=3, batch_size=32, seeds=2, progress=False, retrain=False, figures=False)
    merged = run_study(STUDY, data, output_dir=tmp_path / "merged", **options)
    apart = run_study(STUDY, data, output_dir=tmp_path / "apart", runs="experiment", **options)
    records = apart.summary["runs"]
    # 8-8 lr=0.003 belongs to both experiments but trains (2 seeds) only in the first run.
    assert [(record["label"], record["variants"], record["trained"]) for record in records] == [
        ("widths", ["4 seed=1", "8-8 lr=0.003"], 4),
        ("penalties", ["8-8 l2=0.01 lr=0.003"], 2),
    ]
    assert len(apart.runs) == 2
    for alone, together in zip(apart.summary["variants"], merged.summary["variants"]):
        for history, same in zip(alone["histories"], together["histories"]):
            assert history == same  # bitwise in any company: apart or merged, the same numbers
    state = apart.variant_state(2, seed_index=1)
    assert state.params["hidden_0"]["kernel"].shape == (NUM_WORDS, 8)


def test_study_all_with_three_seeds_has_mean_and_sd_per_variant(tmp_path):
    result = run_study(
        "all",
        synthetic_data(),
        output_dir=tmp_path,
        validation=40,
        epochs=2,
        batch_size=32,
        seeds=3,
        progress=False,
        retrain=False,
        figures=False,
    )
    variants = result.summary["variants"]
    assert len(variants) == 9 and sum(record["trained"] for record in result.summary["runs"]) == 27
    for variant in variants:
        for key in ("best_val_loss", "best_epoch", "val_accuracy_at_best"):
            stats = variant["stats"][key]
            assert stats["n"] == 3 and stats["sd"] is not None and stats["min"] <= stats["mean"] <= stats["max"]
    assert "over 3 seeds" in (tmp_path / "report.md").read_text()


def test_run_study_rejects_bad_settings_before_training(tmp_path):
    data = synthetic_data(num_train=20, num_test=10)
    with pytest.raises(ImdbJaxError, match="epochs must be a positive integer"):
        run_study("units", data, output_dir=tmp_path, epochs=0)
    with pytest.raises(ImdbJaxError, match="seeds must be a positive integer, got 0"):
        run_study("units", data, output_dir=tmp_path, seeds=0)
    with pytest.raises(ImdbJaxError, match="unknown experiment"):
        run_study(["units", "depth"], data, output_dir=tmp_path)
    with pytest.raises(ImdbJaxError, match="validation must be between 1 and 19"):
        run_study("units", data, output_dir=tmp_path, validation=20)
    assert not any(tmp_path.iterdir())
    with pytest.raises(ImdbJaxError, match="cannot write the study to /proc/x"):
        run_study("units", data, output_dir="/proc/x", validation=10)


# ---------------------------------------------------------------------------------------------
# Spec files.


def test_load_specs_reads_json_and_toml(tmp_path):
    expected = [VariantSpec((4,)), VariantSpec((16, 16), l2=0.001, seed=3, name="l2")]
    (tmp_path / "study.json").write_text(
        json.dumps([{"hidden_units": [4]}, {"hidden_units": [16, 16], "l2": 0.001, "seed": 3, "name": "l2"}])
    )
    (tmp_path / "wrapped.json").write_text(json.dumps({"variants": [spec.to_dict() for spec in expected]}))
    (tmp_path / "study.toml").write_text(
        '[[variants]]\nhidden_units = [4]\n\n[[variants]]\nhidden_units = [16, 16]\nl2 = 0.001\nseed = 3\nname = "l2"\n'
    )
    for name in ("study.json", "wrapped.json", "study.toml"):
        assert load_specs(tmp_path / name) == expected


@pytest.mark.parametrize(
    "name, text, message",
    [
        ("broken.json", "[{", "not valid JSON"),
        ("broken.toml", "[[variants]\n", "not valid TOML"),
        ("empty.json", "[]", "non-empty list"),
        ("table.json", '{"hidden_units": [4]}', "non-empty list"),
        ("unknown.json", '[{"hidden_units": [4], "units": 3}]', "variant 1: unknown variant settings: units"),
        (
            "negative.toml",
            "[[variants]]\nhidden_units = [4]\n[[variants]]\ndropout_rate = 1.5\n",
            "variant 2: dropout_rate must be in",
        ),
        ("width.json", '[{"hidden_units": [0]}]', "widths must be positive"),
    ],
)
def test_load_specs_rejects_bad_files_clearly(tmp_path, name, text, message):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ImdbJaxError, match=message) as error:
        load_specs(path)
    assert str(path) in str(error.value)


def test_load_specs_missing_file(tmp_path):
    with pytest.raises(ImdbJaxError, match="cannot read the study file"):
        load_specs(tmp_path / "missing.toml")
