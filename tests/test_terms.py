import math

import pytest
import torch

from diffcodec.prior import Prior, PriorConfig
from diffcodec.terms import compute_terms
from diffcodec.units import nats_to_bpd
from diffcodec.unet import UNetConfig

from .conftest import make_tiny_prior, random_images


def test_terms_sum_to_total(tiny_prior):
    terms = compute_terms(tiny_prior, random_images(5), generator=torch.Generator().manual_seed(0))
    assert terms.step_nats.shape == (5, 20) and terms.x0_mse.shape == (5, 20)
    manual = terms.prior_nats + terms.step_nats.sum(1)
    torch.testing.assert_close(terms.total_nats, manual, rtol=0, atol=0)
    assert torch.isfinite(terms.step_nats).all() and (terms.step_nats[:, 1:] >= 0).all()
    assert torch.allclose(terms.total_bpd(), terms.total_nats / (64 * math.log(2)))


def test_prior_term_is_about_1e5_bits_per_dim_for_linear_T1000():
    cfg = PriorConfig(unet=UNetConfig(image_size=8, base_channels=4, channel_mult=(1,), attention_resolutions=(), learn_variance=True))
    terms = compute_terms(Prior(cfg).eval(), random_images(8), Prior(cfg).schedule(4))
    prior_bpd = nats_to_bpd(terms.prior_nats, 64)
    assert 2e-6 < prior_bpd.mean().item() < 3e-5


def test_chunking_does_not_change_the_terms(tiny_prior):
    """Same noise whatever the chunking; only float32 network round-off (batch-size dependent) differs."""
    images = random_images(3)
    a = compute_terms(tiny_prior, images, generator=torch.Generator().manual_seed(5), max_batch=3)
    b = compute_terms(tiny_prior, images, generator=torch.Generator().manual_seed(5), max_batch=1000)
    torch.testing.assert_close(a.step_nats, b.step_nats, rtol=1e-5, atol=1e-6)


def test_same_seed_same_figures_other_seed_other_figures(tiny_prior):
    images = random_images(2)
    a = compute_terms(tiny_prior, images, generator=torch.Generator().manual_seed(1)).total_nats
    b = compute_terms(tiny_prior, images, generator=torch.Generator().manual_seed(1)).total_nats
    c = compute_terms(tiny_prior, images, generator=torch.Generator().manual_seed(2)).total_nats
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("variance", ["small", "large", "learned"])
def test_respaced_terms_have_one_column_per_step(variance):
    prior = make_tiny_prior(variance)
    terms = compute_terms(prior, random_images(2), prior.schedule(6, "front"))
    assert terms.step_nats.shape == (2, 6) and torch.isfinite(terms.total_nats).all()


@pytest.mark.parametrize(
    "bad,match",
    [
        (torch.rand(2, 1, 8, 8), "integer pixels"),
        (torch.zeros(2, 3, 8, 8, dtype=torch.uint8), "channels"),
        (torch.zeros(2, 1, 16, 16, dtype=torch.uint8), "16x16"),
        (torch.full((2, 1, 8, 8), 300, dtype=torch.int32), "0..255"),
    ],
)
def test_bad_images_give_value_errors(tiny_prior, bad, match):
    with pytest.raises(ValueError, match=match):
        compute_terms(tiny_prior, bad)
