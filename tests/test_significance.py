"""The paired gate statistics: noise passes, a lost intent is named, Tarone is Tarone."""

from __future__ import annotations

import numpy as np
import pytest

from models.significance import compare_paired, material_drop, mcnemar_worse, regressions, tarone


def _labels(k: int, per: int) -> list[str]:
    return [f"intent {i}?" for i in range(k) for _ in range(per)]


def _noisy(y: list[str], acc: float, rng: np.random.Generator, names: list[str]) -> list[str]:
    """Predictions right with probability ``acc``, otherwise a random other label."""
    out = []
    for t in y:
        out.append(t if rng.random() < acc else rng.choice([n for n in names if n != t]))
    return out


def test_tarone_counts_only_tests_that_could_be_significant():
    # two tests can reach alpha/2; the third (min p 0.25) never can, so K = 2, not 3
    adjusted, k = tarone([0.001, 0.02, 0.25], [1e-4, 1e-3, 0.25], alpha=0.05)
    assert k == 2
    assert adjusted == pytest.approx([0.002, 0.04, 1.0])
    # when every test could be significant it is Bonferroni
    adjusted, k = tarone([0.01, 0.02], [1e-6, 1e-6], alpha=0.05)
    assert k == 2 and adjusted == pytest.approx([0.02, 0.04])
    with pytest.raises(ValueError, match="smallest attainable"):
        tarone([0.1], [], alpha=0.05)


def test_a_lost_intent_among_150_small_intents_is_named():
    """12 golden texts per intent, 150 intents: Bonferroni/Holm over 150 would need p < 3.3e-4,
    which 11 flipped texts of 12 never reach; Tarone's family is the few intents that changed."""
    rng = np.random.default_rng(5)
    y = _labels(150, 12)
    names = sorted(set(y))
    champ = _noisy(y, 0.9, rng, names)
    cand = [p if rng.random() < 0.97 else (t if p != t else names[(names.index(t) + 1) % 150])
            for t, p in zip(y, champ)]  # a few texts flip either way everywhere: noise
    right = {n: sum(t == n and p == t for t, p in zip(y, champ)) for n in names}
    lost = next(n for n in names if right[n] in (10, 11))  # the champion got 10 or 11 of its 12 right
    hits = [i for i, t in enumerate(y) if t == lost and champ[i] == t]
    for i in hits:
        cand[i] = names[(names.index(lost) + 1) % 150]
    overall, intents = compare_paired(y, champ, cand, resamples=200)
    by = {r.slice: r for r in intents}
    assert by[lost].p_value * 150 > 0.05  # Bonferroni (and Holm) over all 150 intents would miss it
    assert [r.slice for r in regressions(intents, 0.05, 0.1)] == [lost]
    assert by[lost].p_adjusted < 0.05


def test_overall_blocks_only_a_drop_shown_larger_than_the_minimum():
    rng = np.random.default_rng(6)
    y = _labels(30, 60)
    names = sorted(set(y))
    champ = _noisy(y, 0.9, rng, names)
    right = [i for i, (t, p) in enumerate(zip(y, champ)) if t == p]
    small, large = list(champ), list(champ)
    for i in right[:9]:  # 0.5 points worse: below a 1-point minimum, passes
        small[i] = next(n for n in names if n != y[i])
    for i in right[:90]:  # 5 points worse: shown larger than 1 point, blocks
        large[i] = next(n for n in names if n != y[i])
    small_overall, _ = compare_paired(y, champ, small)
    large_overall, _ = compare_paired(y, champ, large)
    assert small_overall.p_value < 0.05  # significant, yet not shown to exceed the minimum effect
    assert not material_drop(small_overall, 0.01)
    assert material_drop(large_overall, 0.01)
    assert large_overall.bound_high >= large_overall.effect


def test_mcnemar_one_sided_exact():
    assert mcnemar_worse(0, 5) == 1.0
    assert mcnemar_worse(3, 0) == pytest.approx(0.125)  # three of three discordant pairs went wrong
    assert mcnemar_worse(2, 2) == pytest.approx(11 / 16)


def test_identical_models_have_no_regression():
    y = _labels(5, 20)
    overall, intents = compare_paired(y, y, y)
    assert overall.worse == overall.better == 0
    assert regressions([overall, *intents], alpha=0.05, min_effect=0.0) == []


def test_a_lost_intent_is_named():
    rng = np.random.default_rng(1)
    y = _labels(27, 33)
    names = sorted(set(y))
    champ = _noisy(y, 0.97, rng, names)
    cand = list(champ)
    lost = "intent 7?"
    for i, t in enumerate(y):
        if t == lost:
            cand[i] = "intent 8?"
    overall, intents = compare_paired(y, champ, cand)
    found = regressions(intents, alpha=0.05, min_effect=0.1)
    assert [r.slice for r in found] == [lost]
    assert found[0].effect < -0.9 and found[0].p_adjusted < 1e-6


def test_better_overall_but_two_texts_worse_in_one_intent_passes():
    rng = np.random.default_rng(2)
    y = _labels(27, 30)
    names = sorted(set(y))
    champ = _noisy(y, 0.9, rng, names)
    cand = [t if rng.random() < 0.5 else p for t, p in zip(y, champ)]  # fixes about half the errors
    idx = [i for i, t in enumerate(y) if t == "intent 3?" and cand[i] == t][:2]
    for i in idx:
        cand[i] = "intent 4?"
    overall, intents = compare_paired(y, champ, cand)
    assert overall.effect > 0
    assert regressions([overall, *intents], alpha=0.05, min_effect=0.05) == []


@pytest.mark.parametrize(("intents", "per_intent"), [(27, 33), (150, 12)])
def test_same_quality_candidates_pass_at_least_19_in_20(intents, per_intent):
    """Two independent models of equal accuracy: the gate blocks one by chance rarely, with 27
    intents of 33 golden texts and with 150 of 12 (where Tarone's family is smallest)."""
    rng = np.random.default_rng(3)
    y = _labels(intents, per_intent)
    names = sorted(set(y))
    blocked = 0
    trials = 60
    for _ in range(trials):
        champ, cand = _noisy(y, 0.9, rng, names), _noisy(y, 0.9, rng, names)
        overall, per = compare_paired(y, champ, cand, resamples=200)
        blocked += bool(material_drop(overall, 0.01) or regressions(per, 0.05, 0.1))
    assert blocked / trials <= 0.05


def test_lengths_must_match():
    with pytest.raises(ValueError, match="equal lengths"):
        compare_paired(["a", "b"], ["a"], ["a", "b"])


def test_bootstrap_ci_contains_the_observed_effect():
    rng = np.random.default_rng(4)
    y = _labels(10, 30)
    names = sorted(set(y))
    champ = _noisy(y, 0.9, rng, names)
    right = [i for i, (t, p) in enumerate(zip(y, champ)) if t == p]
    cand = list(champ)
    for i in right[::8][:30]:  # 30 of 300 texts newly wrong: a 10-point drop
        cand[i] = next(n for n in names if n != y[i])
    overall, _ = compare_paired(y, champ, cand)
    assert overall.effect == pytest.approx(-0.1)
    assert overall.ci_low <= overall.effect <= overall.ci_high
    assert overall.ci_high < 0  # a 10-point drop on 300 texts is clearly a drop
