import numpy as np
import pytest

from diffcodec.schedule import Spacing, cosine_betas, linear_betas, make_schedule, respace, spaced_timesteps


def test_linear_endpoints_scale_with_T():
    assert linear_betas(1000)[[0, -1]] == pytest.approx([1e-4, 0.02])
    assert linear_betas(100)[[0, -1]] == pytest.approx([1e-3, 0.2])
    assert linear_betas(1000).dtype == np.float64


def test_cosine_matches_definition():
    T, s = 1000, 0.008
    abar = np.cumprod(1 - cosine_betas(T))
    f = lambda t: np.cos((t / T + s) / (1 + s) * np.pi / 2) ** 2  # noqa: E731
    t = np.arange(1, T + 1)
    expected = f(t) / f(0)
    # β is clipped at 0.999 only at the very end, so ᾱ agrees everywhere before that.
    assert np.allclose(abar[:-1], expected[:-1], rtol=1e-12, atol=0)
    assert cosine_betas(T).max() <= 0.999


@pytest.mark.parametrize("kind", ["linear", "cosine"])
@pytest.mark.parametrize("K,spacing", [(10, "even"), (37, "even"), (50, "front"), (999, "front"), (2, "even")])
def test_respaced_alpha_bar_exact_at_kept_steps(kind, K, spacing):
    base = make_schedule(kind, 1000)
    steps = spaced_timesteps(1000, K, spacing)
    short = respace(base, steps)
    assert short.num_steps == K
    assert steps[0] == 1 and np.all(np.diff(steps) > 0)
    np.testing.assert_allclose(short.alphas_cumprod, base.alphas_cumprod[steps - 1], rtol=1e-12, atol=1e-15)
    assert np.array_equal(short.timesteps, steps)


def test_full_respacing_reproduces_schedule():
    base = make_schedule("linear", 1000)
    same = respace(base, spaced_timesteps(1000, 1000))
    np.testing.assert_allclose(same.betas, base.betas, rtol=1e-10, atol=0)
    np.testing.assert_allclose(same.posterior_variance, base.posterior_variance, rtol=1e-9, atol=0)


def test_front_spacing_keeps_every_first_step():
    steps = spaced_timesteps(1000, 100, Spacing.FRONT)
    assert steps[:50].tolist() == list(range(1, 51))
    assert steps[-1] == 1000 and len(steps) == 100


@pytest.mark.parametrize("K", [0, -3, 1001])
def test_impossible_step_counts_are_refused(K):
    with pytest.raises(ValueError, match="number of steps"):
        spaced_timesteps(1000, K)


def test_respace_rejects_a_set_without_the_first_step():
    base = make_schedule("linear", 100)
    with pytest.raises(ValueError):
        respace(base, np.array([2, 50, 100]))
