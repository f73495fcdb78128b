"""Negative samplers: distributions, expected counts, never the padding id."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mindref.samplers import LogUniformSampler, UniformSampler


@given(n=st.integers(1, 500))
def test_log_uniform_probabilities_sum_to_one_and_decrease(n):
    s = LogUniformSampler(np.arange(1, n + 1))
    p = np.exp(s.log_p)
    np.testing.assert_allclose(p.sum(), 1.0, rtol=1e-12)
    assert np.all(np.diff(p) < 0)


@pytest.mark.parametrize("sampler", [LogUniformSampler(np.array([4, 2, 5, 1, 3])),
                                     UniformSampler(6)])
def test_empirical_frequencies_match_expected_counts(sampler):
    """Counts of 200k draws are within 5 standard deviations of S * P(y) for every item."""
    S = 200_000
    draws = sampler.sample(np.random.default_rng(0), S)
    assert draws.min() >= 1 and draws.max() < sampler.num_items  # never padding
    counts = np.bincount(draws, minlength=sampler.num_items)[1:]
    expected = np.exp(sampler.log_expected_count(np.arange(1, sampler.num_items), S))
    np.testing.assert_allclose(expected.sum(), S, rtol=1e-12)
    assert np.all(np.abs(counts - expected) < 5 * np.sqrt(expected))


def test_from_counts_ranks_popular_items_first():
    s = LogUniformSampler.from_counts(np.array([99, 5, 50, 5, 7]))  # index 0 is padding
    np.testing.assert_array_equal(s.item_by_rank, [2, 4, 1, 3])  # ties by id


def test_bad_construction_is_refused():
    with pytest.raises(ValueError, match="permutation"):
        LogUniformSampler(np.array([1, 1, 2]))
    with pytest.raises(ValueError, match="at least one real item"):
        UniformSampler(1)
