"""How a progressive file ends exactly: x_0 coded in one segment from the last latent sent.

Walking the chain to x_1 and coding x_0 with the prior's decoder P(x_0|x_1) is DDPM's Algorithm 3,
but every step sent by reverse channel coding costs its KL plus a per-chunk overhead, while coding
x_0 straight from a latent x_k with a discretized Gaussian around the network's x̂_0(x_k) costs
only a few per cent above the chain's remaining bound (measured on the embedded prior with true
samples of q: 1.08× the VLB of the steps it replaces from t = 10, 1.12× from t = 50). So the
encoder may end the file at whichever state gives the smallest file, and says which in the header:

    finish code 0   no exact end (a lossy file)
    finish code 1   P(x_0|x_1), the prior's own discretized decoder (only from x_1)
    finish code 2+i N(x̂_0(x_k), (s_i·√((1 − ᾱ_k)/ᾱ_k))²) discretized over the pixel bins, s_i = SCALES[i]
    finish code 18  the same with one scale per class of pixels (CLASSES): the pixels of each tile
                    ranked by the network's variance output v at x_k, split into NUM_CLASSES equal
                    classes; the class scales (4 bits each) lead the range-coded pixel words

The network's v says where x̂_0 is unsure, so a scale per class of v fits the errors better than one
scale (24 test images, true samples of q: 0.995× the chain's remaining bound from t = 10 instead of
1.065×, 1.039× instead of 1.081× from t = 20). Priors without a learned variance have no v and use
codes 1-17.

Means and log-scales are snapped to 2^-20 (coding.bitsback.decoder_probs), so both sides build
bit-identical masses from the bit-identical network output they share. The pixels go through
constriction's queue range coder after the step stream; trailing zero bytes are dropped.

Round trip (a test executes this)::

    >>> import numpy as np, torch
    >>> tiles = np.array([[[[0, 17], [128, 255]]]], dtype=np.uint8)
    >>> x0_hat = torch.tensor([[[[-1.0, -0.85], [0.0, 1.0]]]], dtype=torch.float64)
    >>> v = torch.tensor([[[[0.3, -0.2], [0.9, 0.1]]]])              # the network's variance output
    >>> classes(v).tolist()                                            # pixels ranked by v, 4 classes
    [[2, 0, 3, 1]]
    >>> fin = model(CLASSES, 5, 0.98, x0_hat, v=v, scales=(0, 3, 7, 15))
    >>> data, bits = encode_pixels(tiles, fin)
    >>> bool((decode_pixels(data, CLASSES, 5, 0.98, x0_hat, tiles.shape, v=v) == tiles).all())
    True
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import constriction
import numpy as np
import torch

from ..diffusion import discretized_gaussian_log_likelihood, pixels_to_model
from .bitsback import decoder_probs, snap

SCALES = tuple((i + 1) / 8 for i in range(16))  # direct finish std in units of √((1 − ᾱ_k)/ᾱ_k)
NONE, DECODER, DIRECT = 0, 1, 2
CLASSES = DIRECT + len(SCALES)  # one scale per class of the network's v
MAX_CODE = CLASSES
NUM_CLASSES = 4
MIN_ALPHA_BAR = 1e-6  # no direct finish from states this noisy (x̂_0 says nothing; the scale would overflow)
RANGE_CODER_BITS = 32  # what the range coder adds to the ideal bits at most (its final word)
CLASS_SIDE_BITS = NUM_CLASSES * 4  # the class scales, uniform over SCALES
_SCALE_INDEX = constriction.stream.model.Uniform(len(SCALES))
_CATEGORICAL = constriction.stream.model.Categorical(perfect=False)


@dataclass
class Finish:
    """One way to end a file from state x_k: its code, model [B, D] float64, ideal bits for this image."""

    code: int
    mean: torch.Tensor  # [B, D]
    logvar: torch.Tensor  # [B, D]
    bits: float = math.inf  # the pixels' ideal bits, plus the class scales' for CLASSES
    scales: tuple[int, ...] = ()  # CLASSES: the index into SCALES of each class


def classes(v: torch.Tensor) -> torch.Tensor:
    """Class of every pixel [B, D] long: its rank in its tile's v, cut into NUM_CLASSES equal parts (ties by position)."""
    v = v.flatten(1)
    ranks = torch.empty_like(v, dtype=torch.long)
    order = torch.argsort(v, dim=1, stable=True)
    ranks.scatter_(1, order, torch.arange(v.shape[1]).expand_as(order).contiguous())
    return ranks * NUM_CLASSES // v.shape[1]


def _direct_scale(alpha_bar: float) -> float:
    if alpha_bar < MIN_ALPHA_BAR:
        raise ValueError("progressive file is corrupted (a direct finish from pure noise)")
    return math.sqrt((1.0 - alpha_bar) / alpha_bar)


def model(code: int, k: int, alpha_bar: float, x0_hat: torch.Tensor, decoder=None, v=None,
          scales: tuple[int, ...] = ()) -> Finish:
    """The finish model ``code`` at state x_k (ᾱ_k = ``alpha_bar``); ``decoder`` = P(x_0|x_1)'s (mean, std) at k = 1,
    ``v`` the network's variance output at x_k and ``scales`` the class scales (CLASSES)."""
    if code == DECODER:
        if k != 1 or decoder is None:
            raise ValueError("the prior's decoder finishes only from x_1")
        mean, std = decoder
        return Finish(code, mean, 2.0 * torch.log(std))
    mean = x0_hat.flatten(1)
    if DIRECT <= code < CLASSES:
        scale = SCALES[code - DIRECT] * _direct_scale(alpha_bar)
        return Finish(code, mean, torch.full_like(mean, 2.0 * math.log(scale)))
    if code != CLASSES:
        raise ValueError(f"unknown finish code {code}")
    if v is None:
        raise ValueError("progressive file is corrupted (a class finish with a prior that has no variance output)")
    if len(scales) != NUM_CLASSES or not all(0 <= i < len(SCALES) for i in scales):
        raise ValueError(f"finish needs {NUM_CLASSES} class scales in 0..{len(SCALES) - 1}, got {scales}")
    log_scales = torch.tensor([2.0 * math.log(SCALES[i]) for i in scales], dtype=torch.float64)
    logvar = log_scales[classes(v)] + 2.0 * math.log(_direct_scale(alpha_bar))
    return Finish(code, mean, logvar, scales=tuple(scales))


def best(tiles: np.ndarray, k: int, alpha_bar: float, x0_hat: torch.Tensor, decoder=None, v=None) -> Finish | None:
    """The cheapest finish from x_k for these tiles [B, C, t, t] uint8 (ideal bits, exact masses); None if none applies."""
    x0 = pixels_to_model(torch.from_numpy(tiles), torch.float64).reshape(1, -1)  # [1, B·D]
    fins = [model(DECODER, k, alpha_bar, x0_hat, decoder)] if decoder is not None and k == 1 else []
    direct = alpha_bar >= MIN_ALPHA_BAR
    fins += [model(code, k, alpha_bar, x0_hat) for code in range(DIRECT, CLASSES)] if direct else []
    if not fins:
        return None
    bits = _pixel_bits(x0, fins)  # [models, B·D]
    totals = bits.sum(1)
    pick = int(torch.argmin(totals))
    fins[pick].bits = float(totals[pick])
    if direct and v is not None:
        cls = classes(v).reshape(-1)
        per_class = torch.stack([bits[-len(SCALES):, cls == c].sum(1) for c in range(NUM_CLASSES)])  # [classes, scales]
        scales = tuple(int(i) for i in torch.argmin(per_class, dim=1))
        if float(per_class.min(1).values.sum()) + CLASS_SIDE_BITS < fins[pick].bits:
            fin = model(CLASSES, k, alpha_bar, x0_hat, v=v, scales=scales)
            fin.bits = float(_pixel_bits(x0, [fin]).sum()) + CLASS_SIDE_BITS
            return fin
    return fins[pick]


def _pixel_bits(x0: torch.Tensor, fins: list[Finish]) -> torch.Tensor:
    """Ideal bits of every pixel under each finish model with snapped parameters: [models, B·D]."""
    mean = torch.from_numpy(snap(torch.stack([f.mean.reshape(-1) for f in fins]).numpy()))
    log_scale = torch.from_numpy(snap(0.5 * torch.stack([f.logvar.reshape(-1) for f in fins]).numpy()))
    return -discretized_gaussian_log_likelihood(x0.expand_as(mean), mean, log_scale) / math.log(2.0)


def encode_pixels(tiles: np.ndarray, fin: Finish) -> tuple[bytes, float]:
    """x_0 of every tile [B, C, t, t] uint8 under ``fin`` (its class scales first) → (bytes without trailing zeros, ideal bits)."""
    probs = decoder_probs(fin.mean.numpy().reshape(-1), fin.logvar.numpy().reshape(-1))
    symbols = tiles.reshape(-1).astype(np.int32)
    enc = constriction.stream.queue.RangeEncoder()
    if fin.code == CLASSES:
        enc.encode(np.array(fin.scales, dtype=np.int32), _SCALE_INDEX)
    enc.encode(symbols, _CATEGORICAL, probs)
    p = probs[np.arange(len(symbols)), symbols] / probs.sum(axis=1)
    side = CLASS_SIDE_BITS if fin.code == CLASSES else 0
    return enc.get_compressed().astype("<u4").tobytes().rstrip(b"\0"), float(-np.log2(p).sum()) + side


def decode_pixels(data: bytes, code: int, k: int, alpha_bar: float, x0_hat: torch.Tensor, shape, decoder=None,
                  v=None) -> np.ndarray:
    """The pixels [B, C, t, t] uint8 that :func:`encode_pixels` wrote with finish ``code`` from state x_k."""
    words = np.frombuffer(data + b"\0" * (-len(data) % 4), dtype="<u4").astype(np.uint32)
    try:  # constriction asserts on a stream no encoder could have written (a corrupted file)
        dec = constriction.stream.queue.RangeDecoder(words if len(words) else np.zeros(1, np.uint32))
        scales = tuple(int(i) for i in dec.decode(_SCALE_INDEX, NUM_CLASSES)) if code == CLASSES else ()
        fin = model(code, k, alpha_bar, x0_hat, decoder, v, scales)
        probs = decoder_probs(fin.mean.numpy().reshape(-1), fin.logvar.numpy().reshape(-1))
        return dec.decode(_CATEGORICAL, probs).astype(np.uint8).reshape(shape)
    except (AssertionError, RuntimeError) as err:
        raise ValueError(f"decoding desynchronized (the exact pixels' stream is invalid: a corrupted file; {err}); nothing written") from None
