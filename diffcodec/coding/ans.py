"""A thin, validating wrapper around constriction's ANS stack (``constriction.stream.stack.AnsCoder``).

Stack order: ``push_*`` appends symbols on top (constriction's ``encode_reverse``, so a later pop of
the same array returns it in forward order); ``pop_*`` removes them from the top (``decode``). Pushes
and pops interleave freely, which is what bits-back coding needs. Round trip::

    >>> import numpy as np
    >>> stack = Stack.seeded(4)                     # 4 pseudo-random seed words under a seal word
    >>> seed = stack.words(unseal=True)
    >>> sym = stack.pop_gaussian(np.zeros(5), np.full(5, 3.0), 40)   # bits-back: pop a sample
    >>> stack.push_gaussian(sym, np.zeros(5), np.full(5, 3.0), 40)   # ... and push it back
    >>> bool(np.array_equal(stack.words(unseal=True), seed))
    True

Facts this module guards (constriction 0.5.0): every symbol in a leaky model has probability at
least 2^-24, so one pop consumes at most 24 bits; popping from an empty stack silently returns
garbage, so :meth:`Stack.ensure_bits` keeps a floor under every pop by adding words at the *bottom*
of the stack (which no earlier operation has read, so the result is as if the seed had been larger
from the start) and records how deep pops ever reached, so that words no pop touched can be trimmed
from the bottom afterwards; invalid means or stds raise a pyo3 ``PanicException`` that
``except Exception`` does not catch, so all parameters are validated here first and bad ones raise
ValueError. Quantized Gaussians absorb the tails in their edge bins (measured: the edge symbol costs
−log2 Φ((min + 0.5 − μ)/σ)), which the escape coding of :meth:`push_gaussian_escaped` relies on.
"""

from __future__ import annotations

import numpy as np
import constriction

_stack = constriction.stream.stack
_model = constriction.stream.model

PRECISION_BITS = 24  # constriction's default model precision: p >= 2^-24 for every symbol
WORD_BITS = 32
MARGIN_WORDS = 4  # words kept below the deepest pop (the 64-bit head refills from them)
DRY_WORDS = MARGIN_WORDS - 2  # a decoder pop leaving fewer words has run dry (2 words of slack for the head)
ESCAPE_BITS = 16  # an escaped residual's excess is sent as two 16-bit uniform symbols
MAX_ESCAPE = 2 ** (2 * ESCAPE_BITS)
_UNIFORM = _model.Uniform(2**ESCAPE_BITS)
_CATEGORICAL = _model.Categorical(perfect=False)
_GAUSSIANS: dict[int, object] = {}


def _gaussian(radius: int):
    """QuantizedGaussian on symbols −radius..radius (cached)."""
    g = _GAUSSIANS.get(radius)
    if g is None:
        g = _GAUSSIANS[radius] = _model.QuantizedGaussian(-radius, radius)
    return g


def seed_words(count: int, salt: int) -> np.ndarray:
    """``count`` deterministic pseudo-random uint32 words (PCG64 seeded by ``salt``)."""
    return np.random.default_rng([0x5EED, salt]).integers(0, 2**32, size=count, dtype=np.uint32)


def _check_params(mean: np.ndarray, std: np.ndarray, n: int, radius: int) -> tuple[np.ndarray, np.ndarray]:
    mean = np.ascontiguousarray(mean, dtype=np.float64).reshape(-1)
    std = np.ascontiguousarray(std, dtype=np.float64).reshape(-1)
    if mean.shape != (n,) or std.shape != (n,):
        raise ValueError(f"expected {n} means and stds, got {mean.shape[0]} and {std.shape[0]}")
    if not 1 <= radius < 2**20:
        raise ValueError(f"alphabet radius must be in 1..2^20, got {radius}")
    if n and not (np.isfinite(mean).all() and np.isfinite(std).all()):
        raise ValueError("entropy model parameters are not finite (is the prior file damaged?)")
    if n and (std.min() <= 0.0 or np.abs(mean).max() > 4 * radius):
        raise ValueError("entropy model parameters out of range (std must be > 0, |mean| within the alphabet)")
    return mean, std


class Stack:
    """An ANS stack of 32-bit words that records how deep pops reached (for the seed accounting)."""

    def __init__(self, words: np.ndarray, sealed: bool, floor_words: int = 0):
        words = np.ascontiguousarray(words, dtype=np.uint32)
        self._coder = _stack.AnsCoder(words, seal=sealed)
        self.floor_words = floor_words  # a pop that leaves fewer words means the stream ran dry
        self.seed = words if sealed else np.zeros(0, np.uint32)  # the seed under the seal, bottom first
        self.prepended_words = 0  # words added at the bottom by ensure_bits
        self._min_depth: list[tuple[int, int]] = []  # (prepended so far, words left) after each pop
        self._salt = 0
        self.low_water_bits = self.level_bits()  # lowest level after a pop since mark_low_water()

    @classmethod
    def seeded(cls, num_words: int = 0) -> "Stack":
        """A sealed stack over ``num_words`` pseudo-random seed words (more are added on demand)."""
        stack = cls(seed_words(num_words, 0), sealed=True)
        stack._salt = 1
        return stack

    @classmethod
    def over(cls, words: np.ndarray) -> "Stack":
        """A sealed stack whose seed is ``words`` (e.g. another codec's output, recovered at the end)."""
        stack = cls(words, sealed=True)
        stack._salt = 1
        return stack

    @classmethod
    def from_words(cls, words: np.ndarray) -> "Stack":
        """The stack a decoder starts from: exactly the words an encoder produced.

        A decoder passes through the encoder's states in reverse, and the encoder kept at least
        MARGIN_WORDS under every pop (:meth:`ensure_bits`, and trimming keeps them), so no decoder pop
        of a genuine stream leaves fewer than MARGIN_WORDS; fewer than ``DRY_WORDS`` means the stream
        ran dry (a forged header asking for more images than the file holds, or a desynchronized
        decoder): the pop raises ValueError at once instead of decoding garbage to the end.
        """
        if len(words) == 0:
            raise ValueError("compressed stream is empty")
        return cls(words, sealed=False, floor_words=DRY_WORDS)

    # -- size and content ------------------------------------------------------------------
    def num_bits(self) -> int:
        return int(self._coder.num_bits())

    def num_words(self) -> int:
        return int(self._coder.num_words())

    def words(self, unseal: bool = False) -> np.ndarray:
        """Copy of the stack, bottom first. ``unseal`` removes the seal word (ValueError if absent)."""
        try:
            return self._coder.get_compressed(unseal=unseal) if unseal else self._coder.get_compressed()
        except BaseException as err:  # constriction raises a plain AssertionError/PanicException
            if isinstance(err, (KeyboardInterrupt, SystemExit)):
                raise
            raise ValueError("the stream did not end in the sealed seed (corrupted or desynchronized)") from None

    # -- the floor under pops --------------------------------------------------------------
    def ensure_bits(self, bits: int) -> None:
        """Make sure at least ``bits`` (+ a margin) lie on the stack, adding seed words at the bottom."""
        need = -(-bits // WORD_BITS) + MARGIN_WORDS
        have = self.num_words()
        if have >= need:
            return
        extra = max(need - have, 64)
        fresh = seed_words(extra, self._salt)
        self._coder = _stack.AnsCoder(np.concatenate([fresh, self._coder.get_compressed()]), seal=False)
        self.seed = np.concatenate([fresh, self.seed])
        self._salt += 1
        self.prepended_words += extra

    def level_bits(self) -> int:
        """Bits on the stack above its original bottom (words prepended by ensure_bits count below 0)."""
        return self.num_bits() - WORD_BITS * self.prepended_words

    def mark_low_water(self) -> int:
        """Start tracking the lowest level from here (see low_water_bits); returns the current level."""
        self.low_water_bits = self.level_bits()
        return self.low_water_bits

    def untouched_bottom_words(self) -> int:
        """How many words at the bottom of the final stack no pop ever read (safe to trim)."""
        if not self._min_depth:
            return 0
        # In coordinates of the final stack, a pop that left ``left`` words after ``pre`` prepends
        # reached down to word index (total prepends − pre) + ``left`` from the final bottom.
        deepest = min(self.prepended_words - pre + left for pre, left in self._min_depth)
        return max(0, deepest - MARGIN_WORDS)

    def _after_pop(self) -> None:
        left = self.num_words()
        if left < self.floor_words:
            raise ValueError("decoding desynchronized (the stream ran dry); no images written")
        self._min_depth.append((self.prepended_words, left))
        self.low_water_bits = min(self.low_water_bits, self.level_bits())

    # -- quantized Gaussians on −radius..radius -------------------------------------------
    def push_gaussian(self, symbols: np.ndarray, mean: np.ndarray, std: np.ndarray, radius: int) -> None:
        """Push int symbols in −radius..radius under N(mean, std²) quantized to unit bins (edges absorb tails)."""
        symbols = np.ascontiguousarray(symbols, dtype=np.int64).reshape(-1)
        mean, std = _check_params(mean, std, len(symbols), radius)
        if len(symbols) and np.abs(symbols).max() > radius:
            raise ValueError("symbol outside the model's alphabet (corrupted or desynchronized stream)")
        if len(symbols):
            self._coder.encode_reverse(symbols.astype(np.int32), _gaussian(radius), mean, std)

    def pop_gaussian(self, mean: np.ndarray, std: np.ndarray, radius: int) -> np.ndarray:
        """Pop len(mean) symbols pushed by :meth:`push_gaussian` with the same parameters → int64."""
        mean, std = _check_params(mean, std, len(np.reshape(mean, -1)), radius)
        if len(mean) == 0:
            return np.zeros(0, dtype=np.int64)
        out = self._coder.decode(_gaussian(radius), mean, std).astype(np.int64)
        self._after_pop()
        return out

    # -- unbounded residuals: a quantized Gaussian whose edge symbols escape ---------------
    def push_gaussian_escaped(self, residuals: np.ndarray, mean: np.ndarray, std: np.ndarray, radius: int) -> None:
        """Push any int residuals: |r| < radius as is; otherwise the edge symbol ±radius, then the excess.

        The edge symbol carries the whole tail mass beyond it, and the excess |r| − radius (< 2^32)
        follows as two uniform 16-bit symbols, so P's support covers every integer a sender can
        produce. Pushed excess first, main symbols last, so a pop sees the main symbols first.
        """
        r = np.ascontiguousarray(residuals, dtype=np.int64).reshape(-1)
        edge = np.abs(r) >= radius
        excess = np.abs(r[edge]) - radius
        if len(excess) and excess.max() >= MAX_ESCAPE:
            raise ValueError("latent residual too large to code (is the prior file damaged?)")
        if len(excess):
            halves = np.stack([excess >> ESCAPE_BITS, excess & (2**ESCAPE_BITS - 1)], axis=1).reshape(-1)
            self._coder.encode_reverse(halves.astype(np.int32), _UNIFORM)
        self.push_gaussian(np.clip(r, -radius, radius), mean, std, radius)

    def pop_gaussian_escaped(self, mean: np.ndarray, std: np.ndarray, radius: int) -> np.ndarray:
        """Inverse of :meth:`push_gaussian_escaped` → int64 residuals."""
        r = self.pop_gaussian(mean, std, radius)
        edge = np.abs(r) >= radius
        n = int(edge.sum())
        if n:
            halves = self._coder.decode(_UNIFORM, 2 * n).astype(np.int64).reshape(n, 2)
            self._after_pop()
            excess = (halves[:, 0] << ESCAPE_BITS) | halves[:, 1]
            r[edge] = np.sign(r[edge]) * (radius + excess)
        return r

    # -- categorical with explicit probabilities ------------------------------------------
    def push_categorical(self, symbols: np.ndarray, probs: np.ndarray) -> None:
        """Push symbols in 0..A−1 with per-symbol probability rows probs [n, A] (rescaled by constriction)."""
        symbols = np.ascontiguousarray(symbols, dtype=np.int32).reshape(-1)
        probs = _check_probs(probs, len(symbols))
        if len(symbols) and (symbols.min() < 0 or symbols.max() >= probs.shape[1]):
            raise ValueError("symbol outside the categorical alphabet")
        if len(symbols):
            self._coder.encode_reverse(symbols, _CATEGORICAL, probs)

    def pop_categorical(self, probs: np.ndarray) -> np.ndarray:
        probs = _check_probs(probs, len(probs))
        if len(probs) == 0:
            return np.zeros(0, dtype=np.int64)
        out = self._coder.decode(_CATEGORICAL, probs).astype(np.int64)
        self._after_pop()
        return out


def _check_probs(probs: np.ndarray, n: int) -> np.ndarray:
    probs = np.ascontiguousarray(probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[0] != n or probs.shape[1] < 2:
        raise ValueError(f"expected a probability table [{n}, A>=2], got {list(probs.shape)}")
    if n and not (np.isfinite(probs).all() and probs.min() >= 0.0 and probs.sum(axis=1).min() > 0.0):
        raise ValueError("probability table must be finite, non-negative, with positive row sums")
    return probs
