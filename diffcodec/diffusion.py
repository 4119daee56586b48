"""The diffusion math of DDPM (Ho et al. 2020), with no network and no I/O.

Conventions: pixels k ∈ 0..255 map to x = k/127.5 − 1 (bin width 2/255). Densities are Gaussian per
dimension; every function works elementwise and returns nats per dimension unless it says it sums.
"""

from __future__ import annotations

import math

import numpy as np
import torch

def as_pixels(images, shape: tuple[int, int, int] | None = None) -> torch.Tensor:
    """Validate 8-bit images and return them as a [B, C, H, W] uint8 tensor.

    Accepts a torch tensor or NumPy array of any integer dtype with values in 0..255. Raises
    ValueError naming the problem for floats, other ranks, out-of-range values or, when ``shape``
    (C, H, W) is given, a different channel count or size (H = W = None: any size).
    """
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(images)
    if not isinstance(images, torch.Tensor):
        raise ValueError(f"images must be a tensor or array of 8-bit pixels, got {type(images).__name__}")
    if images.dtype.is_floating_point or images.dtype.is_complex or images.dtype == torch.bool:
        raise ValueError(f"images must hold integer pixels 0..255, got dtype {images.dtype}")
    if images.dim() != 4:
        raise ValueError(f"images must have shape [B, C, H, W], got {list(images.shape)}")
    if images.numel() and (int(images.min()) < 0 or int(images.max()) > 255):
        raise ValueError(f"pixel values must lie in 0..255, got {int(images.min())}..{int(images.max())}")
    if shape is not None:
        c, h, w = shape
        if images.shape[1] != c:
            raise ValueError(f"images have {images.shape[1]} channels, the prior expects {c}")
        if h is not None and tuple(images.shape[2:]) != (h, w):
            raise ValueError(f"images are {images.shape[2]}x{images.shape[3]}, the prior expects {h}x{w}")
    return images.to(torch.uint8)


def pixels_to_model(images: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 k → k/127.5 − 1 in [−1, 1]."""
    return images.to(dtype) / 127.5 - 1.0


def model_to_pixels(x: torch.Tensor) -> torch.Tensor:
    """[−1, 1] → nearest uint8 pixel (clamped)."""
    return ((x + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)


def normal_kl(mean1, logvar1, mean2, logvar2):
    """KL(N(mean1, e^logvar1) ‖ N(mean2, e^logvar2)) in nats, elementwise.

    KL = ½(log σ2² − log σ1² + σ1²/σ2² + (μ1 − μ2)²/σ2² − 1).
    """
    return 0.5 * (logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2) - 1.0)


def log1mexp(a: torch.Tensor) -> torch.Tensor:
    """log(1 − e^a) for a ≤ 0, accurate on both sides of −ln 2 (Mächler 2012).

    Each branch sees an input clamped to its own side, so the unused branch never produces inf/NaN
    (which would poison gradients through torch.where).
    """
    ln2 = math.log(2.0)
    near = torch.log(-torch.expm1(a.clamp(min=-ln2, max=-1e-30)))
    far = torch.log1p(-torch.exp(a.clamp(max=-ln2)))
    return torch.where(a > -ln2, near, far)


def log_normal_interval(lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """log(Φ(hi) − Φ(lo)) for standardized bounds lo < hi (±inf allowed), stable in both tails.

    In the upper tail the mass is computed by reflection, Φ(hi) − Φ(lo) = Φ(−lo) − Φ(−hi), so that
    neither side ever subtracts two numbers close to 1.
    """
    upper = lo > 0
    a = torch.where(upper, -hi, lo)  # the bound further into the tail after reflection
    b = torch.where(upper, -lo, hi)
    log_b = torch.special.log_ndtr(b)
    log_a = torch.special.log_ndtr(a)
    return log_b + log1mexp(torch.clamp(log_a - log_b, max=0.0))


def discretized_gaussian_log_likelihood(x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """log P(x) under N(mean, e^{2·log_scale}) integrated over x's pixel bin, in nats per dimension.

    ``x`` holds exact pixel centres k/127.5 − 1. The bin is [x − 1/255, x + 1/255]; the bin of pixel 0
    extends to −∞ and that of pixel 255 to +∞, so the 256 masses sum to one. Exact normal CDF.
    """
    inv_scale = torch.exp(-log_scale)
    # Edges are computed from the pixel index, so neighbouring bins share bit-identical edges and the
    # 256 masses telescope to one even for scales far below the bin width.
    k = torch.round((x + 1.0) * 127.5)
    lo_edge = (k - 0.5) / 127.5 - 1.0
    hi_edge = (k + 0.5) / 127.5 - 1.0
    lo = torch.where(k < 0.5, torch.full_like(x, -math.inf), (lo_edge - mean) * inv_scale)
    hi = torch.where(k > 254.5, torch.full_like(x, math.inf), (hi_edge - mean) * inv_scale)
    return log_normal_interval(lo, hi)


def q_sample(x0: torch.Tensor, alpha_bar: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """x_t = √ᾱ x_0 + √(1 − ᾱ) ε, with ``alpha_bar`` broadcastable to x0."""
    return torch.sqrt(alpha_bar) * x0 + torch.sqrt(1.0 - alpha_bar) * noise


def predict_x0(x_t: torch.Tensor, eps: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    """x̂_0 = (x_t − √(1 − ᾱ) ε)/√ᾱ.

    At ᾱ = 0 (a schedule whose last β is 1) the quotient is ±∞ (clipping makes it ±1) and, where
    x_t = ε exactly, 0/0: that case is 0 (the clipped limit's midpoint) instead of NaN, so a network
    whose output lands on the latent's value (bf16 rounding onto a grid point does) does not poison
    the step. Non-finite inputs stay non-finite."""
    num = x_t - torch.sqrt(1.0 - alpha_bar) * eps
    den = torch.sqrt(alpha_bar)
    return torch.where((num == 0) & (den == 0), torch.zeros_like(num), num / den)


def eps_from_v(x_t: torch.Tensor, v: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    """ε from a v-prediction v = √ᾱ ε − √(1 − ᾱ) x_0 (Salimans & Ho 2022): ε = √ᾱ v + √(1 − ᾱ) x_t."""
    return torch.sqrt(alpha_bar) * v + torch.sqrt(1.0 - alpha_bar) * x_t


def eps_from_x0(x_t: torch.Tensor, x0: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    """ε from a prediction of x_0: ε = (x_t − √ᾱ x_0)/√(1 − ᾱ), the inverse of :func:`predict_x0`."""
    return (x_t - torch.sqrt(alpha_bar) * x0) / torch.sqrt(1.0 - alpha_bar)


def prior_kl(x0: torch.Tensor, alpha_bar_T: float) -> torch.Tensor:
    """L_T per dimension: KL(q(x_T|x_0) ‖ N(0, I)) = KL(N(√ᾱ_T x_0, 1 − ᾱ_T) ‖ N(0, 1))."""
    mean = math.sqrt(alpha_bar_T) * x0
    logvar = torch.full_like(x0, math.log1p(-alpha_bar_T))
    return normal_kl(mean, logvar, torch.zeros_like(x0), torch.zeros_like(x0))
