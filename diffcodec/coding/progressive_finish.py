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
    finish code 19  the class scales around x̂_0 corrected by the residual of the pixel above
                    (RESIDUAL): mean = x̂_0 + a·(x_0 − x̂_0)_up in the same tile and channel, a in
                    eighths 0..7/8 (3 bits, after the scales) fitted by least squares; the pixels go
                    in the same order as for the other codes, one row at a time, each row's means
                    following from the row decoded before it

The network's v says where x̂_0 is unsure, so a scale per class of v fits the errors better than one
scale (24 test images, true samples of q: 0.995× the chain's remaining bound from t = 10 instead of
1.065×, 1.039× instead of 1.081× from t = 20). Priors without a learned variance have no v and use
codes 1-17. What x̂_0 misses is smooth: the residual of the pixel above predicts part of a
pixel's own (code 19).

The pixels are range-coded in tile, channel, row, column order and the file drops the coder's
trailing zero bytes, which the decoder reads back as zeros: a final run of pixels of value 0 (the
first symbol of every model) then costs almost nothing, whatever the model said it would (the
dark rows at the bottom of many Fashion-MNIST images: up to 26 bytes on the first 40 test images). :func:`best` therefore
counts only the bits before that run when it compares finishes and states, and (format 5) first
turns every tile so that the run is longest: as it is, rotated by 180°, transposed, or transposed
and rotated (ORIENTATIONS, 2 bits ahead of everything else; the first 100 test images end in 63
black pixels on average as they are, in 162 turned the best of the four ways). Every model then
works on the turned tiles (the residual's pixel "above" is the one before it in the turned order).

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
RESIDUAL = CLASSES + 1  # the class scales around x̂_0 corrected by the residual of the pixel above
MAX_CODE = RESIDUAL
WEIGHT_LEVELS = 8  # the residual weight a in eighths, 0..7/8
NUM_CLASSES = 4
MIN_ALPHA_BAR = 1e-6  # no direct finish from states this noisy (x̂_0 says nothing; the scale would overflow)
RANGE_CODER_BITS = 32  # what the range coder adds to the ideal bits at most (its final word)
CLASS_SIDE_BITS = NUM_CLASSES * 4  # the class scales, uniform over SCALES
RESIDUAL_SIDE_BITS = CLASS_SIDE_BITS + 3  # and the weight, uniform over WEIGHT_LEVELS
_SIDE_BITS = {CLASSES: CLASS_SIDE_BITS, RESIDUAL: RESIDUAL_SIDE_BITS}  # side information ahead of the pixels, by code
ORIENTATIONS = 4  # tiles as they are, rotated by 180°, transposed, transposed and rotated (format 5)
ORIENT_BITS = 2
_ORIENT_INDEX = constriction.stream.model.Uniform(ORIENTATIONS)
_SCALE_INDEX = constriction.stream.model.Uniform(len(SCALES))
_WEIGHT_INDEX = constriction.stream.model.Uniform(WEIGHT_LEVELS)
_CATEGORICAL = constriction.stream.model.Categorical(perfect=False)


@dataclass
class Finish:
    """One way to end a file from state x_k: its code, model [B, D] float64, ideal bits for this image."""

    code: int
    mean: torch.Tensor  # [B, D]
    logvar: torch.Tensor  # [B, D]
    bits: float = math.inf  # the pixels' ideal bits, plus the side information's (CLASSES, RESIDUAL)
    scales: tuple[int, ...] = ()  # CLASSES, RESIDUAL: the index into SCALES of each class
    weights: tuple[int, ...] = ()  # RESIDUAL: (a,) in eighths; ``mean`` is then x̂_0 before the correction
    orient: int = 0  # how the tiles are turned before coding (mean and logvar are of the turned tiles)


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
          scales: tuple[int, ...] = (), weights: tuple[int, ...] = ()) -> Finish:
    """The finish model ``code`` at state x_k (ᾱ_k = ``alpha_bar``); ``decoder`` = P(x_0|x_1)'s (mean, std) at k = 1,
    ``v`` the network's variance output at x_k, ``scales`` the class scales (CLASSES, RESIDUAL) and
    ``weights`` the residual weight in eighths (RESIDUAL)."""
    if code == DECODER:
        if k != 1 or decoder is None:
            raise ValueError("the prior's decoder finishes only from x_1")
        mean, std = decoder
        return Finish(code, mean, 2.0 * torch.log(std))
    mean = x0_hat.flatten(1)
    if DIRECT <= code < CLASSES:
        scale = SCALES[code - DIRECT] * _direct_scale(alpha_bar)
        return Finish(code, mean, torch.full_like(mean, 2.0 * math.log(scale)))
    if code not in (CLASSES, RESIDUAL):
        raise ValueError(f"unknown finish code {code}")
    if code == RESIDUAL and (len(weights) != 1 or not all(0 <= w < WEIGHT_LEVELS for w in weights)):
        raise ValueError(f"a residual finish needs 1 weight in 0..{WEIGHT_LEVELS - 1}, got {weights}")
    if v is None:
        raise ValueError("progressive file is corrupted (a class finish with a prior that has no variance output)")
    if len(scales) != NUM_CLASSES or not all(0 <= i < len(SCALES) for i in scales):
        raise ValueError(f"finish needs {NUM_CLASSES} class scales in 0..{len(SCALES) - 1}, got {scales}")
    log_scales = torch.tensor([2.0 * math.log(SCALES[i]) for i in scales], dtype=torch.float64)
    logvar = log_scales[classes(v)] + 2.0 * math.log(_direct_scale(alpha_bar))
    return Finish(code, mean, logvar, scales=tuple(scales), weights=tuple(weights) if code == RESIDUAL else ())


def orient(a, o: int):
    """Tiles [..., h, w] (numpy or torch) turned by orientation ``o``: 0 as they are, 1 rotated by 180°,
    2 transposed, 3 transposed and rotated."""
    if o not in range(ORIENTATIONS):
        raise ValueError(f"unknown orientation {o}")
    torch_like = isinstance(a, torch.Tensor)
    if o >= 2:
        a = a.transpose(-1, -2) if torch_like else np.swapaxes(a, -1, -2)
    if o % 2:
        a = a.flip((-2, -1)) if torch_like else np.flip(a, (-2, -1))
    return a.contiguous() if torch_like else np.ascontiguousarray(a)


def unorient(a, o: int):
    """The inverse of :func:`orient`."""
    a = orient(a, 1) if o % 2 else a
    return orient(a, 2) if o >= 2 else a


def _turn(a, shape, o: int):
    """``a`` (None, or any layout of tiles ``shape``) as turned tiles."""
    return None if a is None else orient(a.reshape(shape), o)


def _longest_free_run(tiles: np.ndarray) -> int:
    """The orientation whose coding order ends in the longest run of zero pixels (the first such)."""
    runs = [int((~_before_trailing_zeros(orient(tiles, o))).sum()) for o in range(ORIENTATIONS)]
    return int(np.argmax(runs))


def best(tiles: np.ndarray, k: int, alpha_bar: float, x0_hat: torch.Tensor, decoder=None, v=None) -> Finish | None:
    """The cheapest finish from x_k for these tiles [B, C, t, u] uint8 (ideal bits before the final run of
    zeros, exact masses), coded in the orientation that makes that run longest; None if none applies."""
    o = _longest_free_run(tiles)
    fin = _best_oriented(orient(tiles, o), k, alpha_bar, _turn(x0_hat, tiles.shape, o),
                         None if decoder is None else tuple(_turn(d, tiles.shape, o) for d in decoder),
                         _turn(v, tiles.shape, o))
    if fin is not None:
        fin.orient, fin.bits = o, fin.bits + ORIENT_BITS
    return fin


def _best_oriented(tiles: np.ndarray, k: int, alpha_bar: float, x0_hat: torch.Tensor, decoder=None, v=None) -> Finish | None:
    x0 = pixels_to_model(torch.from_numpy(tiles), torch.float64).reshape(1, -1)  # [1, B·D]
    fins = [model(DECODER, k, alpha_bar, x0_hat, decoder)] if decoder is not None and k == 1 else []
    direct = alpha_bar >= MIN_ALPHA_BAR
    fins += [model(code, k, alpha_bar, x0_hat) for code in range(DIRECT, CLASSES)] if direct else []
    if not fins:
        return None
    paid = _before_trailing_zeros(tiles)
    bits = _pixel_bits(x0, fins)[:, paid]  # [models, pixels before the final run of zeros]
    totals = bits.sum(1)
    pick = int(torch.argmin(totals))
    fins[pick].bits = float(totals[pick])
    if not direct or v is None:
        return fins[pick]
    cls = classes(v).reshape(-1)[paid]
    by_class = _class_finish(CLASSES, k, alpha_bar, x0_hat, v, cls, bits[-len(SCALES):], ())
    r = (x0 - x0_hat.reshape(1, -1).to(torch.float64)).numpy().reshape(-1)
    weights = (_fit_weight(r, tiles.shape),)
    mean = torch.from_numpy(_corrected(x0_hat.reshape(-1).to(torch.float64).numpy(), r, tiles.shape,
                                       np.arange(r.size), weights[0])).reshape(1, -1)
    shifted = [Finish(RESIDUAL, mean, f.logvar) for f in fins[-len(SCALES):]]
    residual = _class_finish(RESIDUAL, k, alpha_bar, x0_hat, v, cls, _pixel_bits(x0, shifted)[:, paid], weights)
    return min((fins[pick], by_class, residual), key=lambda f: f.bits)


def _before_trailing_zeros(tiles: np.ndarray) -> np.ndarray:
    """Mask of the pixels (in coding order) before the final run of zeros, which the file gets almost free."""
    flat = tiles.reshape(-1)
    nonzero = np.flatnonzero(flat)
    return np.arange(flat.size) <= (nonzero[-1] if len(nonzero) else -1)


def _class_finish(code: int, k: int, alpha_bar: float, x0_hat, v, cls: torch.Tensor, scale_bits: torch.Tensor,
                  weights: tuple[int, ...]) -> Finish:
    """The class finish ``code`` with the cheapest scale per class, from every pixel's bits under each of SCALES."""
    per_class = torch.stack([scale_bits[:, cls == c].sum(1) for c in range(NUM_CLASSES)])  # [classes, scales]
    scales = tuple(int(i) for i in torch.argmin(per_class, dim=1))
    fin = model(code, k, alpha_bar, x0_hat, v=v, scales=scales, weights=weights)
    fin.bits = float(per_class.min(1).values.sum()) + _SIDE_BITS[code]
    return fin


def _fit_weight(r: np.ndarray, shape) -> int:
    """Least-squares weight of the residuals r (flat, tiles ``shape`` [B, C, t, u]) on those above, in eighths 0..7."""
    r = r.reshape(-1, shape[-2], shape[-1])
    up, own = r[:, :-1].reshape(-1), r[:, 1:].reshape(-1)
    w = float(up @ own) / float(up @ up) if up.any() else 0.0
    return int(min(WEIGHT_LEVELS - 1, max(0, round(w * WEIGHT_LEVELS))))


def _corrected(x0_hat: np.ndarray, r: np.ndarray, shape, idx: np.ndarray, weight: int) -> np.ndarray:
    """Means x̂_0 + a·r_up of the flat positions ``idx`` of tiles ``shape`` [B, C, t, u] (x0_hat and r flat
    float64, r known a row before idx; nothing above a tile's first row). One product and one sum per
    pixel, so the same bits in any batch."""
    t, u = shape[-2:]
    up = np.where((idx // u) % t > 0, r[np.maximum(idx - u, 0)], 0.0)
    return x0_hat[idx] + (weight / WEIGHT_LEVELS) * up


def _batches(code: int, shape) -> list[np.ndarray]:
    """Flat positions of tiles ``shape`` [B, C, t, u] in coding order, in the batches both sides compute
    masses for: one row of u at a time for RESIDUAL (each row's means follow from the row before), else all."""
    n, u = int(np.prod(shape)), shape[-1]
    return [np.arange(start, start + u) for start in range(0, n, u)] if code == RESIDUAL else [np.arange(n)]


def _means(fin: Finish, r: np.ndarray, shape, idx: np.ndarray) -> np.ndarray:
    """The means of ``fin`` at the flat positions ``idx`` of tiles ``shape``; r: residuals known before idx."""
    x0_hat = fin.mean.numpy().reshape(-1)
    return _corrected(x0_hat, r, shape, idx, fin.weights[0]) if fin.code == RESIDUAL else x0_hat[idx]


def _pixel_bits(x0: torch.Tensor, fins: list[Finish]) -> torch.Tensor:
    """Ideal bits of every pixel under each finish model with snapped parameters: [models, B·D]."""
    mean = torch.from_numpy(snap(torch.stack([f.mean.reshape(-1) for f in fins]).numpy()))
    log_scale = torch.from_numpy(snap(0.5 * torch.stack([f.logvar.reshape(-1) for f in fins]).numpy()))
    return -discretized_gaussian_log_likelihood(x0.expand_as(mean), mean, log_scale) / math.log(2.0)


def encode_pixels(tiles: np.ndarray, fin: Finish) -> tuple[bytes, float]:
    """x_0 of every tile [B, C, t, u] uint8 under ``fin``, turned by its orientation (which goes first, then
    its class scales and weight) → (bytes without trailing zeros, ideal bits)."""
    tiles = orient(tiles, fin.orient)
    symbols = tiles.reshape(-1).astype(np.int32)
    enc = constriction.stream.queue.RangeEncoder()
    enc.encode(np.array([fin.orient], dtype=np.int32), _ORIENT_INDEX)
    if fin.code in (CLASSES, RESIDUAL):
        enc.encode(np.array(fin.scales, dtype=np.int32), _SCALE_INDEX)
    if fin.code == RESIDUAL:
        enc.encode(np.array(fin.weights, dtype=np.int32), _WEIGHT_INDEX)
    logvar = fin.logvar.numpy().reshape(-1)
    r = pixels_to_model(torch.from_numpy(symbols), torch.float64).numpy() - fin.mean.numpy().reshape(-1)
    bits = float(ORIENT_BITS + _SIDE_BITS.get(fin.code, 0))
    for idx in _batches(fin.code, tiles.shape):
        probs = decoder_probs(_means(fin, r, tiles.shape, idx), logvar[idx])
        enc.encode(symbols[idx], _CATEGORICAL, probs)
        bits -= float(np.log2(probs[np.arange(len(idx)), symbols[idx]] / probs.sum(axis=1)).sum())
    return enc.get_compressed().astype("<u4").tobytes().rstrip(b"\0"), bits


def decode_pixels(data: bytes, code: int, k: int, alpha_bar: float, x0_hat: torch.Tensor, shape, decoder=None,
                  v=None, oriented: bool = True) -> np.ndarray:
    """The pixels [B, C, t, u] uint8 that :func:`encode_pixels` wrote with finish ``code`` from state x_k
    (``oriented``: the stream starts with the orientation, format 5; a format-4 stream does not)."""
    words = np.frombuffer(data + b"\0" * (-len(data) % 4), dtype="<u4").astype(np.uint32)
    try:  # constriction asserts on a stream no encoder could have written (a corrupted file)
        dec = constriction.stream.queue.RangeDecoder(words if len(words) else np.zeros(1, np.uint32))
        o = int(dec.decode(_ORIENT_INDEX)) if oriented else 0
        turned = (*shape[:-2], *(shape[-1:-3:-1] if o >= 2 else shape[-2:]))
        decoder = None if decoder is None else tuple(_turn(d, shape, o) for d in decoder)
        pixels = _decode_oriented(dec, code, k, alpha_bar, _turn(x0_hat, shape, o), turned, decoder, _turn(v, shape, o))
        return unorient(pixels, o)
    except (AssertionError, RuntimeError) as err:
        raise ValueError(f"decoding desynchronized (the exact pixels' stream is invalid: a corrupted file; {err}); nothing written") from None


def _decode_oriented(dec, code: int, k: int, alpha_bar: float, x0_hat: torch.Tensor, shape, decoder, v) -> np.ndarray:
    scales = tuple(int(i) for i in dec.decode(_SCALE_INDEX, NUM_CLASSES)) if code in (CLASSES, RESIDUAL) else ()
    weights = tuple(int(i) for i in dec.decode(_WEIGHT_INDEX, 1)) if code == RESIDUAL else ()
    fin = model(code, k, alpha_bar, x0_hat, decoder, v, scales, weights)
    x0_hat, logvar = fin.mean.numpy().reshape(-1), fin.logvar.numpy().reshape(-1)
    out, r = np.zeros(x0_hat.size, np.int32), np.zeros(x0_hat.size)
    for idx in _batches(code, shape):
        out[idx] = dec.decode(_CATEGORICAL, decoder_probs(_means(fin, r, shape, idx), logvar[idx]))
        r[idx] = pixels_to_model(torch.from_numpy(out[idx]), torch.float64).numpy() - x0_hat[idx]
    return out.astype(np.uint8).reshape(shape)
