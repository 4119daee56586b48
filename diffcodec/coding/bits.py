"""Bit-exact prefix codes: a bit writer/reader and canonical Huffman codes built from probabilities.

The progressive codec frames its steps in bits, not bytes: every codeword is prefix-free, so the
decoder knows exactly where each step ends and a file cut at any byte decodes every step whose last
bit is present. Bits are written most significant first. Round trip (a test executes this)::

    >>> code = HuffmanCode.from_probs([0.5, 0.25, 0.125, 0.125])
    >>> code.lengths.tolist()
    [1, 2, 3, 3]
    >>> w = BitWriter()
    >>> for s in (0, 3, 1):
    ...     code.write(w, s)
    >>> w.write(5, 3)                       # three raw bits
    >>> r = BitReader(w.to_bytes(), w.num_bits)
    >>> [code.read(r) for _ in range(3)], r.read(3), r.position
    ([0, 3, 1], 5, 9)
"""

from __future__ import annotations

import heapq

import numpy as np

MAX_CODE_BITS = 48  # longest codeword we allow; probabilities are floored so no code is longer


class OutOfBits(Exception):
    """The reader reached the end of the available bits (a truncated stream)."""


class BitWriter:
    def __init__(self):
        self._chunks: list[tuple[int, int]] = []
        self.num_bits = 0

    def write(self, value: int, nbits: int) -> None:
        """Append the ``nbits`` low bits of ``value``, most significant first."""
        if nbits:
            if value < 0 or value >> nbits:
                raise ValueError(f"value {value} does not fit in {nbits} bits")
            self._chunks.append((int(value), nbits))
            self.num_bits += nbits

    def to_bytes(self) -> bytes:
        """The bits so far, zero-padded to whole bytes."""
        acc, n = 0, 0
        for value, nbits in self._chunks:
            acc = (acc << nbits) | value
            n += nbits
        pad = -n % 8
        return (acc << pad).to_bytes((n + pad) // 8, "big") if n else b""


class BitReader:
    """Reads bits from ``data``; only the first ``limit_bits`` count (default: all of them)."""

    def __init__(self, data: bytes, limit_bits: int | None = None):
        self._value = int.from_bytes(data, "big")
        self._total = 8 * len(data)
        self.limit = self._total if limit_bits is None else min(limit_bits, self._total)
        self.position = 0

    def read(self, nbits: int) -> int:
        if nbits == 0:
            return 0
        if self.position + nbits > self.limit:
            raise OutOfBits
        shift = self._total - self.position - nbits
        self.position += nbits
        return (self._value >> shift) & ((1 << nbits) - 1)


class HuffmanCode:
    """A canonical Huffman code over symbols 0..n−1 (ties broken by symbol, so it is deterministic)."""

    def __init__(self, lengths: np.ndarray):
        self.lengths = np.asarray(lengths, dtype=np.int64)
        order = sorted(range(len(self.lengths)), key=lambda s: (self.lengths[s], s))
        self.codes = np.zeros(len(self.lengths), dtype=object)
        self._decode: dict[tuple[int, int], int] = {}
        code, prev_len = 0, int(self.lengths[order[0]])
        for i, s in enumerate(order):
            length = int(self.lengths[s])
            if i:
                code = (code + 1) << (length - prev_len)
            prev_len = length
            self.codes[s] = code
            self._decode[(length, code)] = s
        self._lengths_sorted = sorted(set(int(x) for x in self.lengths))

    @classmethod
    def from_probs(cls, probs) -> "HuffmanCode":
        """Optimal prefix code for ``probs`` (floored at 2^-40 so every symbol has a codeword)."""
        p = np.maximum(np.asarray(probs, dtype=np.float64), 2.0**-40)
        if len(p) == 1:
            return cls(np.array([1]))
        heap = [(float(w), s, (s,)) for s, w in enumerate(p)]
        heapq.heapify(heap)
        lengths = np.zeros(len(p), dtype=np.int64)
        tiebreak = len(p)
        while len(heap) > 1:
            w1, _, a = heapq.heappop(heap)
            w2, _, b = heapq.heappop(heap)
            for s in a + b:
                lengths[s] += 1
            heapq.heappush(heap, (w1 + w2, tiebreak, a + b))
            tiebreak += 1
        if lengths.max() > MAX_CODE_BITS:
            raise ValueError("prefix code too deep")
        return cls(lengths)

    def write(self, w: BitWriter, symbol: int) -> None:
        w.write(int(self.codes[symbol]), int(self.lengths[symbol]))

    def read(self, r: BitReader) -> int:
        code, length = 0, 0
        for target in self._lengths_sorted:
            code = (code << (target - length)) | r.read(target - length)
            length = target
            s = self._decode.get((length, code))
            if s is not None:
                return s
        raise ValueError("invalid prefix code in stream (corrupted or desynchronized)")
