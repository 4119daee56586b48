"""A bit-exact arithmetic coder whose prefixes decode safely (Witten, Neal & Cleary 1987).

The progressive codec needs what neither a prefix code nor constriction's range coder gives: symbols
that cost fractions of a bit AND a decoder that, handed a file cut at any byte, knows exactly which
symbols it can still decode. This coder keeps a 32-bit interval and counts its renormalization
shifts; after n shifts the encoder has committed n bits (emitted or pending), and the decoder's
32-bit window holds stream bits n .. n + 31. So:

- *prefix rule*: a symbol decodes correctly when the shifts before it plus 32 bits lie inside the
  available bits; :class:`ArithmeticDecoder` in prefix mode raises ``OutOfBits`` before the first
  symbol that fails this, never returning a wrong symbol;
- *termination*: ``ArithmeticEncoder.terminated(snapshot)`` ends the stream after a snapshot with
  pending + 2 bits, after which any continuation (zeros, or the next segment of the file) decodes
  the same symbols, so a complete file decodes with zero padding.

Frequencies are integers with a total of at most 2^16 (:class:`FrequencyTable`). Bits are written
most significant first. Round trip (a test executes this)::

    >>> table = FrequencyTable.from_probs([0.7, 0.2, 0.1])
    >>> enc = ArithmeticEncoder()
    >>> for s in (0, 0, 2, 1):
    ...     enc.encode_symbol(table, s)
    >>> enc.encode_uniform(1234, 11)
    >>> data, nbits = enc.terminated(enc.snapshot())
    >>> dec = ArithmeticDecoder(data, complete=True)
    >>> [dec.decode_symbol(table) for _ in range(4)], dec.decode_uniform(11), dec.end_bits() == nbits
    ([0, 0, 2, 1], 1234, True)
    >>> cut = ArithmeticDecoder(data[:2], complete=False)    # 16 bits: not enough for a 32-bit window
    >>> try:
    ...     cut.decode_symbol(table)
    ... except OutOfBits:
    ...     print("stops before a symbol it cannot be sure of")
    stops before a symbol it cannot be sure of
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


PRECISION = 32
FULL = 1 << PRECISION
HALF = FULL >> 1
QUARTER = FULL >> 2
TOTAL_BITS = 16  # frequency totals ≤ 2^16 keep every interval ≥ 2^14 wide after renormalization
UNIFORM_PIECE = 16


class OutOfBits(Exception):
    """A cut stream ends before the next symbol could be decoded with certainty."""


class FrequencyTable:
    """Integer frequencies ≥ 1 with a total of exactly 2^16, and their cumulative sums."""

    def __init__(self, freqs: np.ndarray):
        freqs = np.asarray(freqs, dtype=np.int64)
        if freqs.min() < 1 or freqs.sum() > 1 << TOTAL_BITS:
            raise ValueError("frequencies must be >= 1 with a total of at most 2^16")
        self.freqs = freqs
        self.cum = np.concatenate([[0], np.cumsum(freqs)])
        self.total = int(self.cum[-1])

    @classmethod
    def from_probs(cls, probs) -> "FrequencyTable":
        """Quantize probabilities to frequencies (each ≥ 1, total 2^16); deterministic largest-remainder rounding."""
        p = np.maximum(np.asarray(probs, dtype=np.float64), 0.0)
        n = len(p)
        budget = (1 << TOTAL_BITS) - n
        if budget < 0:
            raise ValueError(f"alphabet of {n} symbols is too large for 16-bit frequencies")
        scaled = p / p.sum() * budget
        base = np.floor(scaled).astype(np.int64)
        rest = budget - int(base.sum())
        order = np.lexsort((np.arange(n), -(scaled - base)))  # largest remainder first, ties by symbol
        base[order[:rest]] += 1
        return cls(base + 1)

    def cost_bits(self, symbol: int) -> float:
        return float(np.log2(self.total / self.freqs[symbol]))


@dataclass(frozen=True)
class Snapshot:
    """Encoder state at a symbol boundary: enough to terminate the stream there later."""

    bits: int  # bits emitted so far
    low: int
    high: int
    pending: int

    @property
    def terminated_bits(self) -> int:
        return self.bits + self.pending + 2


class ArithmeticEncoder:
    def __init__(self):
        self.low, self.high, self.pending = 0, FULL - 1, 0
        self._acc, self._bits = 0, 0  # emitted bits as one integer

    def _emit(self, bit: int) -> None:
        self._acc = (self._acc << 1) | bit
        self._bits += 1

    def encode(self, cum_lo: int, cum_hi: int, total: int) -> None:
        """Narrow the interval to [cum_lo, cum_hi) out of ``total``."""
        if not 0 <= cum_lo < cum_hi <= total <= 1 << TOTAL_BITS:
            raise ValueError("invalid arithmetic-coding interval")
        span = self.high - self.low + 1
        self.high = self.low + span * cum_hi // total - 1
        self.low = self.low + span * cum_lo // total
        while True:
            if self.high < HALF:
                self._emit(0)
                for _ in range(self.pending):
                    self._emit(1)
                self.pending = 0
            elif self.low >= HALF:
                self._emit(1)
                for _ in range(self.pending):
                    self._emit(0)
                self.pending = 0
                self.low -= HALF
                self.high -= HALF
            elif self.low >= QUARTER and self.high < 3 * QUARTER:
                self.pending += 1
                self.low -= QUARTER
                self.high -= QUARTER
            else:
                return
            self.low = 2 * self.low
            self.high = 2 * self.high + 1

    def encode_symbol(self, table: FrequencyTable, symbol: int) -> None:
        self.encode(int(table.cum[symbol]), int(table.cum[symbol + 1]), table.total)

    def encode_uniform(self, value: int, nbits: int) -> None:
        """``nbits`` raw bits (exactly nbits of cost), in pieces of at most 16, most significant first."""
        if value < 0 or value >> nbits:
            raise ValueError(f"value {value} does not fit in {nbits} bits")
        while nbits > 0:
            piece = min(nbits, UNIFORM_PIECE)
            nbits -= piece
            v = (value >> nbits) & ((1 << piece) - 1)
            self.encode(v, v + 1, 1 << piece)

    def snapshot(self) -> Snapshot:
        return Snapshot(self._bits, self.low, self.high, self.pending)

    def terminated(self, snap: Snapshot) -> tuple[bytes, int]:
        """The stream as if it had ended at ``snap``: (bytes, zero-padded; number of meaningful bits)."""
        acc = self._acc >> (self._bits - snap.bits)
        bit = 0 if snap.low < QUARTER else 1
        tail = [bit] + [1 - bit] * (snap.pending + 1)
        for b in tail:
            acc = (acc << 1) | b
        nbits = snap.bits + len(tail)
        pad = -nbits % 8
        return (acc << pad).to_bytes((nbits + pad) // 8, "big"), nbits


class ArithmeticDecoder:
    """Decodes an :class:`ArithmeticEncoder` stream from ``data``.

    ``complete``: the stream was terminated inside ``data`` (bits past the end read as zeros).
    Otherwise (a cut file) every symbol must pass the prefix rule, or ``OutOfBits`` is raised.
    """

    def __init__(self, data: bytes, complete: bool):
        self._value_all = int.from_bytes(data, "big")
        self._avail = 8 * len(data)
        self.complete = complete
        self.low, self.high = 0, FULL - 1
        self.shifts = 0
        self.value = self._bits(0, PRECISION)

    def _bits(self, start: int, n: int) -> int:
        """n stream bits from position ``start`` (zeros beyond the data)."""
        end = start + n
        if start >= self._avail:
            return 0
        if end <= self._avail:
            return (self._value_all >> (self._avail - end)) & ((1 << n) - 1)
        have = self._avail - start
        return (self._value_all & ((1 << have) - 1)) << (n - have)

    def _target(self, total: int) -> int:
        if not self.complete and self.shifts + PRECISION > self._avail:
            raise OutOfBits
        span = self.high - self.low + 1
        return ((self.value - self.low + 1) * total - 1) // span

    def _consume(self, cum_lo: int, cum_hi: int, total: int) -> None:
        span = self.high - self.low + 1
        self.high = self.low + span * cum_hi // total - 1
        self.low = self.low + span * cum_lo // total
        while True:
            if self.high < HALF:
                pass
            elif self.low >= HALF:
                self.low -= HALF
                self.high -= HALF
                self.value -= HALF
            elif self.low >= QUARTER and self.high < 3 * QUARTER:
                self.low -= QUARTER
                self.high -= QUARTER
                self.value -= QUARTER
            else:
                return
            self.low = 2 * self.low
            self.high = 2 * self.high + 1
            self.value = 2 * self.value + self._bits(self.shifts + PRECISION, 1)
            self.shifts += 1

    def decode_symbol(self, table: FrequencyTable) -> int:
        target = self._target(table.total)
        if not 0 <= target < table.total:
            raise ValueError("arithmetic decoder out of range (corrupted or desynchronized stream)")
        symbol = int(np.searchsorted(table.cum, target, side="right")) - 1
        self._consume(int(table.cum[symbol]), int(table.cum[symbol + 1]), table.total)
        return symbol

    def decode_uniform(self, nbits: int) -> int:
        value = 0
        while nbits > 0:
            piece = min(nbits, UNIFORM_PIECE)
            nbits -= piece
            v = self._target(1 << piece)
            if not 0 <= v < 1 << piece:
                raise ValueError("arithmetic decoder out of range (corrupted or desynchronized stream)")
            self._consume(v, v + 1, 1 << piece)
            value = (value << piece) | v
        return value

    def end_bits(self) -> int:
        """Where the encoder's terminated stream ends, had it been terminated here: shifts + 2 bits.

        (The encoder's pending count is part of its shifts, so the decoder knows this exactly.)
        """
        return self.shifts + 2
