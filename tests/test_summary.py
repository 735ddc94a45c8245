"""The bootstrap interval of a latency quantile that results tables print beside each p95."""

import numpy as np

from experiments.summary import quantile_ci


def test_the_interval_holds_the_quantile_and_is_seeded():
    v = np.random.default_rng(1).lognormal(0, 0.5, 24)
    lo, hi = quantile_ci(v, 0.95)
    assert lo <= np.quantile(v, 0.95) <= hi and lo < hi
    assert quantile_ci(v, 0.95) == (lo, hi), "same data, same interval"
    assert quantile_ci(v[:1], 0.95) == (None, None)


def test_more_requests_narrow_the_interval_and_tell_real_gaps_apart():
    rng = np.random.default_rng(2)
    few, many = rng.lognormal(0, 0.5, 24), rng.lognormal(0, 0.5, 400)
    width = [hi - lo for lo, hi in (quantile_ci(few, 0.95), quantile_ci(many, 0.95))]
    assert width[1] < width[0] / 2
    slow = quantile_ci(rng.lognormal(0, 0.5, 400) * 3, 0.95)
    assert slow[0] > quantile_ci(many, 0.95)[1], "a 3x slower system lies clearly above"


def test_the_ablation_table_tells_apart_only_what_its_intervals_separate():
    from experiments.headline import against_full
    full = {"e2e_p95": 1.0, "e2e_p95_lo": 0.8, "e2e_p95_hi": 1.2}
    slower = {"e2e_p95": 3.0, "e2e_p95_lo": 2.0, "e2e_p95_hi": 4.0}
    faster = {"e2e_p95": 0.5, "e2e_p95_lo": 0.4, "e2e_p95_hi": 0.6}
    close = {"e2e_p95": 1.1, "e2e_p95_lo": 0.9, "e2e_p95_hi": 1.5}
    assert against_full(full, slower) == "67% lower"  # the full system's p95 is lower
    assert against_full(full, faster) == "100% higher"
    assert against_full(full, close) == "not told apart (intervals overlap)"
    assert against_full(full, {**close, "e2e_p95_lo": float("nan")}).startswith("no interval")
