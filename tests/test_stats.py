"""Between-seed intervals and paired tests against hand-computed values."""

import math

import pytest

from safejax import stats


def test_t_interval_over_three_seeds_by_hand():
  # mean 2, sd 1, sem 1/sqrt(3); t_{2, 0.975} = 4.302653 -> half width 2.484138.
  s = stats.seed_interval([1.0, 2.0, 3.0])
  assert s.mean == 2.0 and s.sd == pytest.approx(1.0) and s.n == 3
  assert (s.low, s.high) == pytest.approx((2 - 2.484138, 2 + 2.484138), abs=1e-6)
  wider = stats.seed_interval([1.0, 2.0, 3.0], confidence=0.99)
  assert wider.low < s.low and wider.high > s.high


def test_interval_is_not_a_pooled_binomial():
  """Two seeds at 0 % and 68.3 % (the issue's raw rung): the between-seed interval spans far more
  than the pooled Wilson interval of 28.5-40.4 % ever could."""
  s = stats.seed_interval([0.0, 0.683])
  assert s.low < 0 and s.high > 1  # t_{1, 0.975} = 12.706: two seeds cannot pin a rate down
  assert s.high - s.low == pytest.approx(2 * 12.706205 * 0.683 / 2, rel=1e-5)


def test_one_seed_and_constant_values():
  one = stats.seed_interval([0.4])
  assert one.mean == 0.4 and math.isnan(one.low) and math.isnan(one.high) and math.isnan(one.sd)
  flat = stats.seed_interval([0.25, 0.25, 0.25])
  assert (flat.low, flat.high) == (0.25, 0.25)


def test_bootstrap_interval_lies_within_the_range_of_the_seeds():
  s = stats.seed_interval([0.1, 0.2, 0.3, 0.5], method="bootstrap", n_resamples=2000)
  assert 0.1 <= s.low < s.mean < s.high <= 0.5 and s.method == "bootstrap"
  assert math.isnan(stats.seed_interval([0.1, 0.2], method="bootstrap").low)


def test_paired_difference_by_hand():
  # differences 0.2, 0.1, 0.3: mean 0.2, sd 0.1, t = 0.2 / (0.1 / sqrt 3) = 3.4641 with 2 df;
  # for 2 df the t cdf is 1/2 + t / (2 sqrt(2 + t^2)), so p = 1 - t / sqrt(2 + t^2) = 0.074180.
  d = stats.paired_difference([0.5, 0.4, 0.6], [0.3, 0.3, 0.3])
  assert d.mean == pytest.approx(0.2) and d.statistic == pytest.approx(3.464102, rel=1e-6)
  assert d.p_value == pytest.approx(1 - 3.464102 / math.sqrt(2 + 12), rel=1e-5)
  assert (d.low, d.high) == pytest.approx((0.2 - 0.248414, 0.2 + 0.248414), abs=1e-6)
  assert d.differences.values == pytest.approx((0.2, 0.1, 0.3))


def test_paired_difference_edge_cases_and_errors():
  constant = stats.paired_difference([0.5, 0.6], [0.4, 0.5])
  assert constant.p_value == 0.0 and constant.low == constant.high == pytest.approx(0.1)
  none = stats.paired_difference([0.5, 0.6], [0.5, 0.6])
  assert none.p_value == 1.0 and none.mean == 0.0
  assert math.isnan(stats.paired_difference([0.5], [0.1]).p_value)
  with pytest.raises(ValueError, match="one per seed on both sides"):
    stats.paired_difference([0.5, 0.6], [0.5])
  with pytest.raises(ValueError, match="non-empty"):
    stats.seed_interval([])
  with pytest.raises(ValueError, match="finite"):
    stats.seed_interval([0.1, float("nan")])
  with pytest.raises(ValueError, match="method"):
    stats.seed_interval([0.1, 0.2], method="wald")


def test_mcnemar_exact_by_hand():
  # 6 prompts where only a succeeds, 1 where only b does: p = 2 * P(X <= 1 | n=7, 1/2) = 2 * 8/128.
  a = [True] * 6 + [False] + [True, False] * 5
  b = [False] * 6 + [True] + [True, False] * 5
  result = stats.mcnemar(a, b)
  assert (result["a_only"], result["b_only"], result["n"]) == (6, 1, 17)
  assert result["p_value"] == pytest.approx(16 / 128)
  assert result["difference"] == pytest.approx(5 / 17)
  assert stats.mcnemar([True, False], [True, False])["p_value"] == 1.0
  with pytest.raises(ValueError, match="equally long"):
    stats.mcnemar([True], [True, False])
