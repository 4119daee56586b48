"""diffusers DDPM folders as priors (diffcodec/diffusers_prior.py), checked against diffusers itself.

Tiny randomly initialised UNet2DModels (8×8, widths 8/16, T = 20) with a DDPMScheduler, written with
save_pretrained. The reference for every convention (timesteps, schedule, first-step variance,
clipping, prediction types) is diffusers' own DDPMScheduler on the same inputs, never a formula
restated here, except the first step's decoder variance, which diffusers does not define (it adds
no noise there) and diffcodec takes from DDPM's likelihood code (log β̃_2).
"""

from __future__ import annotations

import json
import math
import shutil
import socket
import sys

import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")
from diffusers import DDPMScheduler, UNet2DModel  # noqa: E402
from diffusers.schedulers import scheduling_ddpm  # noqa: E402

from diffcodec.checkpoint import load_prior  # noqa: E402
from diffcodec.diffusers_prior import DiffusersConfig  # noqa: E402
from diffcodec.diffusion import discretized_gaussian_log_likelihood, normal_kl, pixels_to_model  # noqa: E402
from diffcodec.terms import compute_terms  # noqa: E402

from .conftest import random_images  # noqa: E402
from .test_cli_core import run  # noqa: E402

T = 20
VARIANCES = ["fixed_small", "fixed_large", "learned_range"]


def make_folder(path, variance="fixed_small", prediction="epsilon", channels=1, clip=True, seed=0, flat=False,
                safe=True, schedule="linear"):
    """A diffusers checkpoint folder (pipeline layout, or flat like google/ddpm-*); returns (unet, scheduler)."""
    torch.manual_seed(seed)
    unet = UNet2DModel(
        sample_size=8, in_channels=channels, out_channels=channels * (2 if variance == "learned_range" else 1),
        block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
    ).eval()
    sched = DDPMScheduler(num_train_timesteps=T, beta_start=1e-3, beta_end=0.2, beta_schedule=schedule,
                          variance_type=variance, prediction_type=prediction, clip_sample=clip)
    unet.save_pretrained(path if flat else path / "unet", safe_serialization=safe)
    sched.save_pretrained(path if flat else path / "scheduler")
    if not flat:
        (path / "model_index.json").write_text(json.dumps(
            {"_class_name": "DDPMPipeline", "unet": ["diffusers", "UNet2DModel"], "scheduler": ["diffusers", "DDPMScheduler"]}))
    return unet, sched


@pytest.fixture
def no_noise(monkeypatch):
    """DDPMScheduler.step adds σ·z at t' > 0; with z = 0 its prev_sample is the mean of p(x_{t−1}|x_t)."""
    monkeypatch.setattr(scheduling_ddpm, "randn_tensor", lambda shape, **kw: torch.zeros(shape, dtype=kw.get("dtype")))


def edit_json(path, **changes):
    cfg = json.loads(path.read_text())
    cfg.update(changes)
    path.write_text(json.dumps(cfg))


def one_line_error(result, fragment: str):
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error:") and fragment in lines[0], result.output


@pytest.mark.parametrize("schedule", ["linear", "scaled_linear", "squaredcos_cap_v2"])
def test_schedule_matches_diffusers(schedule):
    """β and ᾱ over T = 1000 equal DDPMScheduler's float32 tables to float32 round-off."""
    sched = DDPMScheduler(num_train_timesteps=1000, beta_schedule=schedule, beta_start=1e-4, beta_end=0.02)
    cfg = DiffusersConfig(unet={}, beta_schedule=schedule, beta_start=1e-4, beta_end=0.02, num_timesteps=1000,
                          variance_type="fixed_small", prediction_type="epsilon", clip_x0=True, image_channels=1,
                          image_size=8)
    ours = cfg.base_schedule()
    np.testing.assert_allclose(ours.betas, sched.betas.double().numpy(), rtol=2e-6)
    # ᾱ is a product of 1000 float32 factors in diffusers: its relative error grows to ~1e-5
    np.testing.assert_allclose(ours.alphas_cumprod, sched.alphas_cumprod.double().numpy(), rtol=5e-5)
    assert list(ours.timesteps[:2]) == [1, 2] and ours.timesteps[-1] == 1000


@pytest.mark.parametrize("variance,prediction,clip", [
    ("fixed_small", "epsilon", True), ("fixed_large", "epsilon", False), ("learned_range", "epsilon", True),
    ("fixed_small", "v_prediction", False), ("fixed_large", "sample", False), ("learned_range", "v_prediction", True),
])
def test_reverse_step_matches_diffusers(tmp_path, no_noise, one_thread, variance, prediction, clip):
    """At every t' = 0..T−1: x̂_0 and the mean of p(x_{t'}|x_{t'+1}) equal DDPMScheduler.step's on the same
    UNet outputs, and log σ² equals its _get_variance for t' ≥ 1 (at t' = 0: log β̃_2, DDPM's decoder)."""
    unet, sched = make_folder(tmp_path, variance, prediction, channels=3, clip=clip)
    prior = load_prior(tmp_path)
    x_t = 1.5 * torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    beta_tilde_2 = sched._get_variance(1, variance_type="fixed_small").double()
    for tp in range(T):
        with torch.no_grad():
            out = unet(x_t, tp).sample
            rev = prior.reverse(x_t.double(), torch.full((3,), tp), prior.base_schedule)
        ref = sched.step(out, tp, x_t)
        np.testing.assert_allclose(rev.x0_hat.numpy(), ref.pred_original_sample.double().numpy(), rtol=1e-5, atol=2e-5)
        np.testing.assert_allclose(rev.mean.numpy(), ref.prev_sample.double().numpy(), rtol=1e-5, atol=2e-5)
        v = out[:, 3:].double() if variance == "learned_range" else None
        if tp >= 1:
            var = sched._get_variance(tp, predicted_variance=v).double()
            ref_logvar = var if variance == "learned_range" else torch.log(var).expand_as(rev.log_variance)
        elif variance == "learned_range":
            frac = (v + 1) / 2
            ref_logvar = frac * torch.log(sched.betas[0].double()) + (1 - frac) * torch.log(beta_tilde_2)
        else:
            ref_logvar = torch.log(beta_tilde_2).expand_as(rev.log_variance)
        np.testing.assert_allclose(rev.log_variance.numpy(), ref_logvar.numpy(), rtol=1e-5, atol=1e-5)


def direct_terms(unet, sched, images, gen) -> tuple[torch.Tensor, torch.Tensor]:
    """The bound from diffusers' objects alone: x_t by scheduler.add_noise, p's mean by step(), p's variance by
    _get_variance(), q's posterior mean by step() of a sample-predicting twin fed the true x_0, β̃ by
    _get_variance(fixed_small); only the Gaussian KL and decoder formulas are diffcodec's. Noise: one
    randn([B, C, H, W]) per step in increasing order, as terms.compute_terms draws it."""
    x0 = pixels_to_model(torch.as_tensor(images), torch.float64)
    twin = DDPMScheduler.from_config(sched.config, prediction_type="sample", clip_sample=False, variance_type="fixed_small")
    c, learned = x0.shape[1], sched.config.variance_type == "learned_range"
    cols = []
    for tp in range(T):
        noise = torch.randn(x0.shape, generator=gen, dtype=torch.float64)
        x_t = sched.add_noise(x0, noise, torch.tensor([tp]))
        with torch.no_grad():
            out = unet(x_t.float(), tp).sample.double()
        mean = sched.step(out, tp, x_t).prev_sample
        v = out[:, c:] if learned else None
        if tp == 0:  # the decoder: log β̃_2 where diffusers has no variance (module docstring of diffusers_prior)
            small = torch.log(sched._get_variance(1, variance_type="fixed_small").double())
            logvar = (v + 1) / 2 * torch.log(sched.betas[0].double()) + (1 - v) / 2 * small if learned else small
            cols.append(-discretized_gaussian_log_likelihood(x0, mean, 0.5 * logvar.expand_as(x0)).sum((1, 2, 3)))
            continue
        var = sched._get_variance(tp, predicted_variance=v).double()
        logvar = var if learned else torch.log(var).expand_as(x0)
        q_mean = twin.step(x0, tp, x_t).prev_sample
        q_logvar = torch.log(sched._get_variance(tp, variance_type="fixed_small").double()).expand_as(x0)
        cols.append(normal_kl(q_mean, q_logvar, mean, logvar).sum((1, 2, 3)))
    abar_T = sched.alphas_cumprod[-1].double()
    prior_nats = normal_kl(abar_T.sqrt() * x0, torch.log1p(-abar_T).expand_as(x0), 0 * x0, 0 * x0).sum((1, 2, 3))
    return prior_nats, torch.stack(cols, dim=1)


@pytest.mark.parametrize("variance,prediction", [(v, "epsilon") for v in VARIANCES] + [("fixed_large", "v_prediction")])
def test_terms_match_a_direct_diffusers_computation(tmp_path, no_noise, one_thread, variance, prediction):
    """Every per-step term of the loaded prior equals the one computed from diffusers' model and scheduler."""
    unet, sched = make_folder(tmp_path, variance, prediction)
    images = random_images(3, seed=2)
    terms = compute_terms(load_prior(tmp_path), images, generator=torch.Generator().manual_seed(5))
    prior_nats, step_nats = direct_terms(unet, sched, images, torch.Generator().manual_seed(5))
    np.testing.assert_allclose(terms.prior_nats.numpy(), prior_nats.numpy(), rtol=1e-4)
    np.testing.assert_allclose(terms.step_nats.numpy(), step_nats.numpy(), rtol=1e-4, atol=1e-6)


def test_the_unet_is_fed_zero_based_timesteps(tmp_path, one_thread):
    """A respaced chain's step k sits at S_k (1-based); the UNet receives S_k − 1, diffusers' index."""
    make_folder(tmp_path)
    prior = load_prior(tmp_path)
    seen = []
    prior.net.unet.register_forward_pre_hook(lambda m, args: seen.extend(args[1].tolist()))
    schedule = prior.schedule(5, "even")
    compute_terms(prior, random_images(1), schedule)
    assert sorted(set(seen)) == [int(s) - 1 for s in schedule.timesteps]


def test_info_shows_what_was_understood(tmp_path):
    make_folder(tmp_path, "learned_range", "v_prediction", channels=3)
    res = run("info", tmp_path)
    assert res.exit_code == 0, res.output
    for fragment in ("image       3x8x8", "linear β 0.001 → 0.2, T = 20", "learned (diffusers learned_range",
                     "prediction  v_prediction", "source      diffusers"):
        assert fragment in res.output
    rec = json.loads(run("info", tmp_path, "--json").stdout)
    assert rec["config"]["prediction_type"] == "v_prediction" and rec["image_shape"] == [3, 8, 8]
    assert rec["parameters"] == sum(p.numel() for p in UNet2DModel.from_pretrained(tmp_path / "unet").parameters())
    assert rec["digest"] == load_prior(tmp_path).digest


def test_layouts_and_digest(tmp_path):
    """Flat and pipeline folders of the same checkpoint, or a moved folder, share a digest; changes do not."""
    make_folder(tmp_path / "pipe")
    make_folder(tmp_path / "flat", flat=True)
    shutil.copytree(tmp_path / "pipe", tmp_path / "moved")
    digests = {name: load_prior(tmp_path / name).digest for name in ("pipe", "flat", "moved")}
    assert len(set(digests.values())) == 1
    make_folder(tmp_path / "seed1", seed=1)
    shutil.copytree(tmp_path / "pipe", tmp_path / "large")
    edit_json(tmp_path / "large" / "scheduler" / "scheduler_config.json", variance_type="fixed_large")
    assert load_prior(tmp_path / "seed1").digest != digests["pipe"] != load_prior(tmp_path / "large").digest


@pytest.mark.parametrize("variance", VARIANCES)
def test_compress_round_trip(tmp_path, variance):
    make_folder(tmp_path / "prior", variance)
    np.save(tmp_path / "x.npy", random_images(3, seed=3).numpy())
    res = run("compress", tmp_path / "x.npy", "-o", tmp_path / "x.dcl", "--prior", tmp_path / "prior", "--steps", "4",
              "--no-vlb", "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["prior_digest"] == load_prior(tmp_path / "prior").digest
    res = run("decompress", tmp_path / "x.dcl", "-o", tmp_path / "out", "--npy", "--prior", tmp_path / "prior")
    assert res.exit_code == 0, res.output
    assert np.array_equal(np.load(tmp_path / "out" / "images.npy"), random_images(3, seed=3).numpy())


def test_progressive_round_trip_and_changed_folder_refused(tmp_path):
    cosine = "squaredcos_cap_v2"  # ends at β = 0.999, near N(0, I) as progressive coding needs
    make_folder(tmp_path / "prior", "learned_range", channels=3, schedule=cosine)
    image = random_images(1, channels=3, seed=4).numpy()
    np.save(tmp_path / "x.npy", image)
    res = run("encode", tmp_path / "x.npy", "-o", tmp_path / "x.dcp", "--prior", tmp_path / "prior", "--steps", "4")
    assert res.exit_code == 0, res.output
    res = run("decode", tmp_path / "x.dcp", "-o", tmp_path / "x.png", "--prior", tmp_path / "prior")
    assert res.exit_code == 0, res.output
    from diffcodec.images import read_image

    assert np.array_equal(read_image(tmp_path / "x.png"), image[0])
    res = run("compress", tmp_path / "x.npy", "-o", tmp_path / "x.dcl", "--prior", tmp_path / "prior", "--steps", "3",
              "--no-vlb")
    assert res.exit_code == 0, res.output
    make_folder(tmp_path / "prior", "learned_range", channels=3, schedule=cosine, seed=9)  # same folder, other weights
    one_line_error(run("decode", tmp_path / "x.dcp", "-o", tmp_path / "y.png", "--prior", tmp_path / "prior"),
                   "another prior")
    one_line_error(run("decompress", tmp_path / "x.dcl", "-o", tmp_path / "out", "--prior", tmp_path / "prior"),
                   "another prior")
    one_line_error(run("decompress", tmp_path / "x.dcl", "-o", tmp_path / "out"), "not embedded")  # no embedded prior matches


@pytest.mark.parametrize("where,changes,fragment", [
    ("scheduler", {"_class_name": "DDIMScheduler"}, "DDIMScheduler is not supported"),
    ("unet", {"_class_name": "UNet2DConditionModel"}, "UNet2DConditionModel is not supported"),
    ("scheduler", {"beta_schedule": "sigmoid"}, "beta_schedule 'sigmoid'"),
    ("scheduler", {"beta_schedule": "cubic"}, "beta_schedule 'cubic'"),  # diffusers itself raises NotImplementedError
    ("scheduler", {"variance_type": "fixed_large_log"}, "variance_type 'fixed_large_log'"),
    ("scheduler", {"variance_type": "learned"}, "variance_type 'learned'"),
    ("scheduler", {"variance_type": "learned_range"}, "out_channels 1 does not fit"),
    ("scheduler", {"prediction_type": "score"}, "prediction_type 'score'"),
    ("scheduler", {"thresholding": True}, "thresholding"),
    ("scheduler", {"rescale_betas_zero_snr": True}, "rescale_betas_zero_snr"),
    ("scheduler", {"trained_betas": [0.1] * T}, "trained_betas"),
    ("scheduler", {"clip_sample_range": 2.0}, "clip_sample_range 2.0"),
    ("scheduler", {"beta_end": 1.5}, "beta_end 1.5"),
    ("unet", {"num_class_embeds": 10}, "class-conditional"),
    ("unet", {"time_embedding_type": "fourier"}, "fourier"),
    ("unet", {"in_channels": 4, "out_channels": 4}, "in_channels 4"),
    ("unet", {"sample_size": [8, 16]}, "sample_size [8, 16]"),
])
def test_unsupported_configurations_give_one_line(tmp_path, where, changes, fragment):
    make_folder(tmp_path)
    edit_json(tmp_path / where / ("config.json" if where == "unet" else "scheduler_config.json"), **changes)
    one_line_error(run("info", tmp_path), fragment)


def test_folders_that_are_not_checkpoints(tmp_path):
    (tmp_path / "empty").mkdir()
    one_line_error(run("info", tmp_path / "empty"), "not a diffusers checkpoint")
    make_folder(tmp_path / "nosched")
    shutil.rmtree(tmp_path / "nosched" / "scheduler")
    one_line_error(run("info", tmp_path / "nosched"), "no scheduler configuration")
    make_folder(tmp_path / "badjson")
    (tmp_path / "badjson" / "unet" / "config.json").write_text("{not json")
    one_line_error(run("info", tmp_path / "badjson"), "unreadable JSON")


def test_pickled_weights_are_refused_unread(tmp_path, monkeypatch):
    make_folder(tmp_path, safe=False)
    assert not list(tmp_path.rglob("*.safetensors")) and list(tmp_path.rglob("*.bin"))

    def no_unpickling(*args, **kwargs):
        raise AssertionError("a pickle was loaded")

    monkeypatch.setattr(torch, "load", no_unpickling)
    one_line_error(run("info", tmp_path), "holds only pickled weights (diffusion_pytorch_model.bin)")
    one_line_error(run("nll", "--data", tmp_path, "--prior", tmp_path), "safetensors only")


def test_without_diffusers_the_error_says_how_to_install(tmp_path, monkeypatch):
    make_folder(tmp_path)
    monkeypatch.setitem(sys.modules, "diffusers", None)  # import diffusers → ImportError
    one_line_error(run("info", tmp_path), "pip install 'diffcodec[diffusers]'")
    np.save(tmp_path / "x.npy", random_images(1).numpy())
    one_line_error(run("compress", tmp_path / "x.npy", "-o", tmp_path / "x.dcl", "--prior", tmp_path),
                   "pip install 'diffcodec[diffusers]'")


def test_loading_never_touches_the_network(tmp_path, monkeypatch):
    make_folder(tmp_path)

    def offline(*args, **kwargs):
        raise AssertionError("network access")

    monkeypatch.setattr(socket.socket, "connect", offline)
    monkeypatch.setattr(socket, "create_connection", offline)
    assert load_prior(tmp_path).image_shape == (1, 8, 8)


def test_a_weights_file_of_the_folder_points_to_the_folder(tmp_path):
    make_folder(tmp_path)
    one_line_error(run("info", tmp_path / "unet" / "diffusion_pytorch_model.safetensors"), f"--prior {tmp_path}")


def test_nll_and_sample_with_a_diffusers_prior(tmp_path):
    make_folder(tmp_path / "prior", "fixed_large")
    res = run("sample", "--prior", tmp_path / "prior", "-n", "2", "--steps", "3", "-o", tmp_path / "grid.png")
    assert res.exit_code == 0 and (tmp_path / "grid.png").is_file(), res.output
    np.save(tmp_path / "x.npy", random_images(2, seed=6).numpy())
    res = run("nll", "--data", tmp_path / "x.npy", "--prior", tmp_path / "prior", "--estimator", "exact", "--json")
    assert res.exit_code == 0, res.output
    rec = json.loads(res.stdout)
    terms = compute_terms(load_prior(tmp_path / "prior"), random_images(2, seed=6))
    assert rec["num_steps"] == T and math.isclose(rec["total_bpd"], float(terms.total_bpd().mean()), rel_tol=0.2)
