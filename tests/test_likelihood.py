import math

import numpy as np
import pytest
import torch

from diffcodec.diffusion import (
    discretized_gaussian_log_likelihood,
    normal_kl,
    pixels_to_model,
    predict_x0,
    prior_kl,
    q_sample,
)
from diffcodec.likelihood import (
    Estimator,
    _collapsed_strata_var,
    evaluate_nll,
    group_generator,
    mc_proposal,
    stratified_draws,
)
from diffcodec.terms import compute_terms
from diffcodec.units import nats_to_bpd

from .conftest import make_tiny_prior, random_images


pytestmark = pytest.mark.usefixtures("one_thread")


def reference_loop(prior, images, schedule, gen):
    """A straightforward per-timestep loop, independent of terms.py: [K] mean nats, [K] RMSE, [N] L_T nats.

    Noise for step index j is the j-th randn([N, C, H, W]) float64 draw of ``gen`` (the documented
    convention of compute_terms).
    """
    x0 = pixels_to_model(images, torch.float64)
    abar = schedule.alphas_cumprod
    abar_prev = np.concatenate([[1.0], abar[:-1]])
    betas = schedule.betas
    post_var = betas * (1 - abar_prev) / (1 - abar)
    log_post_clipped = np.log(np.concatenate([[post_var[1]], post_var[1:]]))
    log_large = np.log(np.concatenate([[post_var[1]], betas[1:]]))
    C = prior.image_shape[0]
    means, rmses = [], []
    with torch.no_grad():
        for j in range(schedule.num_steps):
            noise = torch.randn(x0.shape, generator=gen, dtype=torch.float64)
            x_t = q_sample(x0, torch.tensor(abar[j], dtype=torch.float64), noise)
            t = torch.full((len(x0),), float(schedule.timesteps[j]))
            out = prior.net(x_t.float(), t).double()
            x0_hat = predict_x0(x_t, out[:, :C], torch.tensor(abar[j], dtype=torch.float64)).clamp(-1, 1)
            c1 = betas[j] * math.sqrt(abar_prev[j]) / (1 - abar[j])
            c2 = (1 - abar_prev[j]) * math.sqrt(1 - betas[j]) / (1 - abar[j])
            mean = c1 * x0_hat + c2 * x_t
            mode = prior.config.variance.value
            if mode == "small":
                logvar = torch.full_like(x0, log_post_clipped[j])
            elif mode == "large":
                logvar = torch.full_like(x0, log_large[j])
            else:
                frac = (out[:, C:] + 1) / 2
                logvar = frac * math.log(betas[j]) + (1 - frac) * log_post_clipped[j]
            if j == 0:
                nats = -discretized_gaussian_log_likelihood(x0, mean, 0.5 * logvar).sum((1, 2, 3))
            else:
                q_mean = c1 * x0 + c2 * x_t
                q_logvar = torch.full_like(x0, math.log(post_var[j]))
                nats = normal_kl(q_mean, q_logvar, mean, logvar).sum((1, 2, 3))
            means.append(nats.mean().item())
            rmses.append(((x0_hat - x0) * 127.5).pow(2).mean().sqrt().item())
    prior_nats = prior_kl(x0, float(abar[-1])).sum((1, 2, 3))
    return np.array(means), np.array(rmses), prior_nats


@pytest.mark.parametrize("variance,steps", [("learned", None), ("small", 7), ("large", 20)])
def test_per_step_values_equal_a_straightforward_loop(variance, steps):
    prior = make_tiny_prior(variance, T=20)
    images = random_images(4, seed=3)
    schedule = prior.schedule(steps, "front")
    # batch >= N: one group, whose generator gives one noise draw per step for all images, as in the
    # loop; one step of the four images per network call, as in the loop.
    result = evaluate_nll(prior, images, schedule, batch=8, pairs_per_call=4, seed=11)
    means, rmses, prior_nats = reference_loop(prior, images, schedule, group_generator(11, 0))
    D = prior.num_dims
    np.testing.assert_allclose(result.term_bpd, nats_to_bpd(means, D), rtol=1e-6)
    np.testing.assert_allclose(result.rmse, rmses, rtol=1e-6)
    assert result.prior_bpd == pytest.approx(nats_to_bpd(prior_nats.mean().item(), D), rel=1e-12, abs=1e-15)
    assert list(result.timesteps) == list(schedule.timesteps)
    assert (result.evaluations == 4).all()


@pytest.mark.parametrize("estimator", ["exact", "mc"])
def test_terms_sum_to_total_and_rates_accumulate(estimator):
    prior = make_tiny_prior()
    result = evaluate_nll(prior, random_images(6), prior.schedule(12, "even"), estimator=estimator, samples=3, batch=4)
    assert result.total_bpd == pytest.approx(result.prior_bpd + result.term_bpd.sum(), rel=1e-12)
    assert result.total_bpd == pytest.approx(result.prior_bpd + result.decoder_bpd + result.kl_bpd, rel=1e-12)
    rate = result.cum_rate_bpd
    assert rate[-1] == pytest.approx(result.prior_bpd, abs=1e-15)  # noisiest step: only L_T sent so far
    assert rate[0] + result.decoder_bpd == pytest.approx(result.total_bpd, rel=1e-12)
    assert np.all(np.diff(rate) <= 1e-15)  # rate grows as t falls (KL terms are >= 0)
    assert result.image_bpd.shape == (6,) and np.isfinite(result.image_bpd).all()


def test_exact_estimator_is_compute_terms_group_by_group():
    prior = make_tiny_prior("small")
    images = random_images(5)
    result = evaluate_nll(prior, images, batch=2, pairs_per_call=64, seed=4)
    totals = torch.cat(
        [
            compute_terms(prior, images[g * 2 : g * 2 + 2], generator=group_generator(4, g), max_batch=64).total_bpd()
            for g in range(3)
        ]
    )
    np.testing.assert_allclose(result.image_bpd, totals.numpy(), rtol=1e-6)
    assert result.total_bpd_stderr == pytest.approx(totals.std().item() / math.sqrt(5), rel=1e-5)


@pytest.mark.parametrize("estimator", ["exact", "mc"])
def test_figures_do_not_depend_on_the_number_of_workers(estimator):
    prior = make_tiny_prior()
    images = random_images(7)
    runs = [evaluate_nll(prior, images, estimator=estimator, samples=3, batch=2, workers=w, seed=5) for w in (1, 3)]
    assert np.array_equal(runs[0].image_bpd, runs[1].image_bpd)
    assert np.array_equal(runs[0].term_bpd, runs[1].term_bpd) and np.array_equal(runs[0].rmse, runs[1].rmse, equal_nan=True)


def test_mc_mean_over_seeds_agrees_with_exact_within_its_interval():
    prior = make_tiny_prior()
    images = random_images(6, seed=1)
    exact = np.array([evaluate_nll(prior, images, seed=s).total_bpd for s in range(12)])
    runs = [evaluate_nll(prior, images, estimator="mc", samples=4, seed=100 + s) for s in range(60)]
    mc = np.array([r.total_bpd for r in runs])
    stated = np.sqrt(np.mean([r.mc_stderr_bpd**2 for r in runs]))  # per-run MC standard error
    # The exact sum is itself noisy (one noise draw per term); both enter the interval of the difference.
    se_diff = math.sqrt(stated**2 / len(mc) + exact.var(ddof=1) / len(exact))
    assert abs(mc.mean() - exact.mean()) < 1.959963984540054 * se_diff
    # The stated error is honest: the real spread over seeds is not wider than it (plus the decoder's noise).
    assert mc.std(ddof=1) < 1.25 * math.sqrt(stated**2 + exact.var(ddof=1))
    # And MC with few samples is noisier than the exact sum, as it must be.
    assert mc.std(ddof=1) > exact.std(ddof=1)


def test_mc_per_step_figures_are_horvitz_thompson_and_count_evaluations():
    prior = make_tiny_prior()
    S, N = 5, 7
    result = evaluate_nll(prior, random_images(N), estimator="mc", samples=S, seed=2, batch=3)
    assert result.evaluations.sum() == N * (S + 1) and result.evaluations[0] == N
    visited = result.evaluations > 0
    assert np.all(result.term_bpd[~visited] == 0) and np.all(np.isnan(result.rmse[~visited]))
    assert np.isfinite(result.rmse[visited]).all()
    assert result.samples == S and result.mc_stderr_bpd > 0


def test_same_seed_same_figures_other_seed_other_figures():
    prior = make_tiny_prior()
    images = random_images(3)
    for est in Estimator:
        a = evaluate_nll(prior, images, estimator=est, samples=3, seed=7)
        b = evaluate_nll(prior, images, estimator=est, samples=3, seed=7)
        c = evaluate_nll(prior, images, estimator=est, samples=3, seed=8)
        assert np.array_equal(a.image_bpd, b.image_bpd) and np.array_equal(a.term_bpd, b.term_bpd)
        assert not np.array_equal(a.image_bpd, c.image_bpd)


def test_prior_is_left_as_it_was():
    prior = make_tiny_prior().train()
    x = torch.randn(2, 1, 8, 8)
    t = torch.tensor([3.0, 9.0])
    with torch.no_grad():
        before = prior.net(x, t)
    threads = torch.get_num_threads()
    evaluate_nll(prior, random_images(2), workers=2)
    assert prior.training and torch.get_num_threads() == threads
    assert not prior.net._forward_pre_hooks
    prior.eval()
    with torch.no_grad():
        assert torch.equal(prior.net(x, t), before)


@pytest.mark.parametrize("S", [1, 3, 19, 40])
def test_stratified_draws_weigh_every_step_to_one_in_expectation(S):
    """The Horvitz–Thompson identity behind unbiasedness: E[Σ_s weight_s·1{i_s = i}] = 1 for every i."""
    q = torch.as_tensor(mc_proposal(make_tiny_prior(T=20).schedule()), dtype=torch.float64)
    rows = 20000
    idx, w = stratified_draws(q, rows, S, torch.Generator().manual_seed(S))
    per_step = torch.zeros(len(q), dtype=torch.float64).index_add_(0, idx.flatten(), w.flatten()) / rows
    # Each step's sum is a mean of 20,000 independent rows; its spread is at most about √(1/(S·q_i)/rows).
    tol = 5 * torch.sqrt(1.0 / (S * q) / rows)
    assert torch.all((per_step - 1).abs() < tol), per_step


def test_proposal_is_a_distribution_with_bounded_weights():
    prior = make_tiny_prior(T=20)
    for schedule in (prior.schedule(), prior.schedule(6, "front")):
        q = mc_proposal(schedule)
        assert len(q) == schedule.num_steps - 1 and q.sum() == pytest.approx(1.0)
        assert q.min() >= 0.5 / len(q) - 1e-15


def test_collapsed_strata_variance():
    c = torch.tensor([[1.0, 3.0, 0.0, 0.0], [2.0, 2.0, 5.0, 1.0]], dtype=torch.float64)
    torch.testing.assert_close(_collapsed_strata_var(c), torch.tensor([4.0, 16.0], dtype=torch.float64))
    odd = torch.tensor([[1.0, 2.0, 3.0]], dtype=torch.float64)  # one group of three: 3/2 · 2
    torch.testing.assert_close(_collapsed_strata_var(odd), torch.tensor([3.0], dtype=torch.float64))
    assert torch.isnan(_collapsed_strata_var(torch.ones(2, 1))).all()


def test_one_image_has_no_stderr_over_images():
    result = evaluate_nll(make_tiny_prior(), random_images(1))
    assert result.num_images == 1 and math.isnan(result.total_bpd_stderr)
    assert result.to_dict()["total_bpd_stderr"] is None


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(images=torch.zeros(2, 3, 8, 8, dtype=torch.uint8)), "channels"),
        (dict(images=torch.zeros(2, 1, 16, 16, dtype=torch.uint8)), "16x16"),
        (dict(images=torch.zeros(0, 1, 8, 8, dtype=torch.uint8)), "no images"),
        (dict(estimator="mc", samples=0), "samples must be >= 1"),
        (dict(batch=0), "batch"),
        (dict(workers=0), "workers"),
        (dict(estimator="bogus"), "bogus"),
    ],
)
def test_bad_arguments_raise_value_errors(kwargs, match):
    prior = make_tiny_prior()
    images = kwargs.pop("images", random_images(2))
    with pytest.raises(ValueError, match=match):
        evaluate_nll(prior, images, **kwargs)


def test_schedule_of_another_prior_is_refused():
    prior = make_tiny_prior(T=20)
    with pytest.raises(ValueError, match="T = 10"):
        evaluate_nll(prior, random_images(2), make_tiny_prior(T=10).schedule())


def test_a_failing_group_stops_the_others_and_restores_the_prior(monkeypatch):
    import diffcodec.likelihood as lik

    real = lik._exact_batch
    calls = []

    def failing(prior, pixels, *args):
        calls.append(len(calls))
        if len(calls) == 2:
            raise ValueError("boom")
        return real(prior, pixels, *args)

    monkeypatch.setattr(lik, "_exact_batch", failing)
    prior = make_tiny_prior()
    with pytest.raises(ValueError, match="boom"):
        evaluate_nll(prior, random_images(64), batch=1, workers=2)
    assert len(calls) < 64 and not prior.net._forward_pre_hooks and torch.get_num_threads() == 1


def test_auto_estimator_is_mc_only_where_it_saves_most_of_the_calls():
    from diffcodec.likelihood import evaluations_per_image, resolve_estimator

    assert resolve_estimator("auto", 1000, 16) is Estimator.MC  # `nll --data fashion-mnist:test`: 17 calls, not 1,000
    assert resolve_estimator("auto", 100, 16) is Estimator.MC
    assert resolve_estimator("auto", 68, 16) is Estimator.EXACT and resolve_estimator("auto", 69, 16) is Estimator.MC
    assert resolve_estimator("exact", 1000, 16) is Estimator.EXACT and resolve_estimator("mc", 5, 16) is Estimator.MC
    assert evaluations_per_image(Estimator.MC, 1000, 16) == 17 and evaluations_per_image(Estimator.EXACT, 1000, 16) == 1000
    result = evaluate_nll(make_tiny_prior(), random_images(3), estimator="auto", samples=2)  # K = 20 > 4·3
    assert result.estimator is Estimator.MC and result.samples == 2


@pytest.mark.parametrize("estimator", ["exact", "mc"])
def test_progress_bar_counts_every_network_evaluation(monkeypatch, estimator):
    """The bar advances per network call (its ETA is live) and ends exactly at its total."""
    import diffcodec.likelihood as lik

    bars = []

    class Bar:
        def __init__(self, total, **kwargs):
            self.total, self.n = total, 0
            bars.append(self)

        def update(self, n):
            self.n += n

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(lik, "tqdm", Bar)
    evaluate_nll(make_tiny_prior(), random_images(5), estimator=estimator, samples=3, batch=2, pairs_per_call=7, workers=2, progress=True)
    (bar,) = bars
    assert bar.total == 5 * (20 if estimator == "exact" else 4) and bar.n == bar.total
