"""Hostile and unusual lossless files: names, forged fields with valid CRCs, a fuzzer with a time limit."""

from __future__ import annotations

import contextlib
import signal
import struct
import time
import zlib

import numpy as np
import pytest

from diffcodec.coding import container
from diffcodec.coding.lossless import CodecParams, batch_sizes, compress, decompress

from .conftest import make_tiny_prior, random_images

MUTANT_SECONDS = 15.0  # a crafted file must fail (or decode) within this (the worst measured: 2.7 s on a busy
# 2-core machine, a forged thread count of 7); the genuine one decodes in ~0.1 s


@pytest.fixture(scope="module")
def coded():
    prior = make_tiny_prior()
    prior.digest = "44" * 32
    images = random_images(6, seed=11).numpy()
    blob, _ = compress(prior, images, [f"b{i}.png" for i in range(6)], CodecParams(steps=4, threads=1, max_batch=2))
    return prior, images, blob


def repack(blob: bytes, names: list[str] | None = None, **fields) -> bytes:
    """The file with header fields (or names) replaced and its CRC recomputed: a hostile file."""
    header, payload = container.unpack(blob)
    values = {f: getattr(header, f) for f in container._VARINT_FIELDS} | fields
    kind, body = container._encode_names(header.names if names is None else names)
    ramp, boot = fields.pop("ramp", header.ramp), fields.pop("boot", header.boot)
    values = {f: values[f] for f in container._VARINT_FIELDS}
    out = blob[: 4 + container.DIGEST_BYTES] + container.varint_fields(values, boot, ramp, len(payload), kind, len(body))
    out += body + header.pixel_hash + payload.astype("<u4").tobytes()
    return out + struct.pack("<I", zlib.crc32(out))


def with_crc(body: bytes) -> bytes:
    return body[:-4] + struct.pack("<I", zlib.crc32(body[:-4]))


class _Timeout(Exception):
    pass


@contextlib.contextmanager
def time_limit(seconds: float):
    """Raise _Timeout in the main thread after ``seconds`` (SIGALRM), so a hang fails the test instead of it."""

    def fire(signum, frame):
        raise _Timeout

    old = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def decodes_cleanly(prior, blob, images) -> str:
    """'ok' if ``blob`` decodes to ``images`` exactly, else the one-line ValueError message; anything
    else (another exception type, a wrong image, a multi-line message, a hang) fails the test."""
    try:
        with time_limit(MUTANT_SECONDS):
            out, _, _ = decompress(prior, blob)
    except ValueError as err:
        msg = str(err)
        assert msg and "\n" not in msg, msg
        return msg
    except _Timeout:
        pytest.fail(f"a crafted file took more than {MUTANT_SECONDS} s to fail")
    assert np.array_equal(out, images), "a crafted file decoded to other images without an error"
    return "ok"


def test_batch_sizes_refuse_an_empty_batch():
    with pytest.raises(ValueError, match="max batch"):
        batch_sizes(10, 0)


@pytest.mark.parametrize(
    "fields,msg",
    [
        (dict(max_batch=0), "max_batch = 0 is outside"),
        (dict(threads=0), "threads = 0 is outside"),
        (dict(threads=256), "threads = 256 is outside"),
        (dict(steps=0), "steps = 0 is outside"),
        (dict(spacing=2), "spacing = 2 is outside"),
        (dict(grid_eighths=1), "grid_eighths = 1 is outside"),
        (dict(channels=2), "channels = 2"),
        (dict(channels=4), "channels = 4 is outside"),
        (dict(boot=((3, 95),)), "bootstrap tiles"),
        (dict(boot=()), "0 bootstrap tiles"),
        (dict(boot=((1, 9),) * 17), "17 bootstrap tiles"),
        (dict(boot=((1, 9),) * 7), "do not fit 6 tiles"),
        (dict(width=0), "width = 0 is outside"),
        (dict(count=2**22, height=1, width=1), "count = 4194304 is outside"),
        (dict(count=2**32, height=1, width=1), "count = 4294967296 is outside"),
        (dict(count=2**20, height=1024, width=1024), "exceed this diffcodec's limits"),  # 2^40 pixels
        (dict(count=2**19, height=1, width=1, steps=65535), "tile-steps"),
        (dict(seed_words=10**6), "seed of 1000000 words"),
        (dict(boot=((1, 0),)), "bootstrap tiles"),
        (dict(ramp=(0,)), "batch sizes"),
        (dict(ramp=(3,)), "batch sizes"),  # above max_batch = 2
        (dict(ramp=(1,) * 6), "batch sizes"),  # 6 tiles where 5 are chained
        (dict(engine=3), "engine = 3 is outside 0..2"),  # no engine has code 3
    ],
)
def test_forged_fields_fail_fast_before_allocating(coded, fields, msg):
    prior, images, blob = coded
    bad = repack(blob, **fields)
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match=msg), time_limit(MUTANT_SECONDS):
        decompress(prior, bad)
    assert time.perf_counter() - t0 < 1.0  # refused from the header alone


def test_forged_image_count_fails_fast(coded):
    """More images than the payload holds: the decoder's stack runs dry and says so within about the
    genuine file's work, instead of decoding garbage for every claimed image."""
    prior, images, blob = coded
    t0 = time.perf_counter()
    decodes_cleanly(prior, blob, images)
    genuine = time.perf_counter() - t0
    for count in (7, 60, 5000):
        t0 = time.perf_counter()
        msg = decodes_cleanly(prior, repack(blob, names=[f"b{i}.png" for i in range(count)], count=count), images)
        assert msg != "ok" and ("ran dry" in msg or "desynchronized" in msg), msg
        assert time.perf_counter() - t0 < max(1.0, 20 * genuine)


def test_renamed_images_fail_the_content_check(coded):
    prior, images, blob = coded
    names = [f"b{i}.png" for i in range(6)]
    names[2] = "evil.png"
    msg = decodes_cleanly(prior, repack(blob, names=names), images)
    assert "names altered" in msg


def test_duplicate_names_in_a_file_are_refused_before_decoding(coded):
    prior, images, blob = coded
    for names in (["b0.png"] * 6, ["b0.png", "B0.PNG", "b2.png", "b3.png", "b4.png", "b5.png"]):
        with pytest.raises(ValueError, match="share the output name"):
            container.unpack(repack(blob, names=names))
    with pytest.raises(ValueError, match="unusable image name"):
        container.unpack(repack(blob, names=["b0.png", "../b1.png", "b2.png", "b3.png", "b4.png", "b5.png"]))


def test_compress_makes_colliding_names_unique():
    prior = make_tiny_prior()
    prior.digest = "55" * 32
    images = random_images(4, seed=2).numpy()
    names = ["a", "a.png", "A.PNG", "sub.bmp"]
    blob, st = compress(prior, images, names, CodecParams(steps=3, threads=1))
    assert st.names == ["a-3.png", "a.png", "A-2.PNG", "sub.bmp.png"]
    out, out_names, _ = decompress(prior, blob)
    assert out_names == st.names and np.array_equal(out, images)


def test_unique_output_names_keep_long_names_within_the_limit():
    long = "x" * 254 + ".png"  # 258 bytes: the stem is shortened
    names = container.unique_output_names([long, long[:-4], "é" * 200])
    assert all(len(n.encode()) <= container.NAME_MAX for n in names)
    assert len({n.casefold() for n in names}) == 3 and all(n.endswith(".png") for n in names)


def test_name_bombs_are_refused(coded):
    prior, images, blob = coded
    header, payload = container.unpack(blob)
    bomb = zlib.compress(b"a" * 10**7, 9)  # 10 MB of names in ~10 kB
    values = {f: getattr(header, f) for f in container._VARINT_FIELDS}
    out = blob[: 4 + container.DIGEST_BYTES] + container.varint_fields(values, header.boot, header.ramp, len(payload), container.NAME_ZLIB, len(bomb))
    out += bomb + header.pixel_hash + payload.astype("<u4").tobytes()
    out += struct.pack("<I", zlib.crc32(out))
    with pytest.raises(ValueError, match="unreadable image names"):
        container.unpack(out)
    template = "\0".join(["p", ".png", "0", "999999999"]).encode()
    out = blob[: 4 + container.DIGEST_BYTES]
    out += container.varint_fields(values, header.boot, header.ramp, len(payload), container.NAME_TEMPLATE, len(template))
    out += template + header.pixel_hash + payload.astype("<u4").tobytes()
    with pytest.raises(ValueError, match="unreadable image names"):
        container.unpack(out + struct.pack("<I", zlib.crc32(out)))


def _field_mutants(blob: bytes, rng: np.random.Generator, n: int):
    """Header fields set to edge values (0, 1, powers of two, huge), CRC recomputed."""
    edges = [0, 1, 2, 3, 7, 255, 256, 2**16 - 1, 2**16, 2**20, 2**22, 2**31, 2**32, 2**40, 2**62]
    for _ in range(n):
        fields = {}
        for f in rng.choice(container._VARINT_FIELDS, size=rng.integers(1, 3), replace=False):
            fields[str(f)] = int(rng.choice(edges))
        yield repack(blob, **fields)


def _byte_mutants(blob: bytes, rng: np.random.Generator, n: int, header_bytes: int):
    """1–3 random byte changes (mostly in the header, some in the payload), CRC recomputed."""
    for _ in range(n):
        b = bytearray(blob)
        for _ in range(rng.integers(1, 4)):
            at = int(rng.integers(3, header_bytes)) if rng.random() < 0.8 else int(rng.integers(3, len(b) - 4))
            b[at] = int(rng.integers(0, 256))
        yield with_crc(bytes(b))


def test_fuzzed_files_fail_fast_and_cleanly(coded):
    """Mutations that keep the CRC valid: every one decodes exactly or fails with a one-line ValueError
    within MUTANT_SECONDS; none hangs, allocates without bound, panics or writes other images."""
    prior, images, blob = coded
    header, payload = container.unpack(blob)
    header_bytes = len(blob) - 4 * len(payload) - 4
    rng = np.random.default_rng(0)
    outcomes = {}
    for mutant in [*_field_mutants(blob, rng, 100), *_byte_mutants(blob, rng, 100, header_bytes)]:
        msg = decodes_cleanly(prior, mutant, images)
        outcomes[msg.split(" (")[0]] = outcomes.get(msg.split(" (")[0], 0) + 1
    assert sum(outcomes.values()) == 200 and len(outcomes) > 3, outcomes


def test_classic_tiles_stand_in_for_initial_bits(monkeypatch):
    """Flat images have tiny WebP files but still dip the stack: the encoder keeps the first tiles
    classic until the seed covers the first chain's dip, and the file is smaller than with one."""
    from diffcodec.coding import lossless

    prior = make_tiny_prior()
    prior.digest = "66" * 32
    images = np.zeros((8, 1, 8, 8), dtype=np.uint8)
    images[:, :, 3:5, 3:5] = np.arange(8).reshape(8, 1, 1, 1) * 30
    names = [f"f{i}.png" for i in range(8)]
    blob, st = compress(prior, images, names, CodecParams(steps=4, threads=1))
    assert st.bootstrap_tiles > 1 and st.initial_bits <= 64
    out, _, back = decompress(prior, blob)
    assert np.array_equal(out, images) and back.bootstrap_tiles == st.bootstrap_tiles
    monkeypatch.setattr(lossless, "MAX_BOOT_TILES", 1)
    one, st1 = compress(prior, images, names, CodecParams(steps=4, threads=1))
    assert st1.bootstrap_tiles == 1 and st1.initial_bits > st.initial_bits and len(one) > len(blob)
    assert np.array_equal(decompress(prior, one)[0], images)


def test_batches_grow_with_the_stack_and_initial_bits_stay_small():
    """The first batch holds one tile and later ones grow only as the stack allows, so the initial
    bits stay near one tile's dip even with a large max_batch (a fixed ramp used to overdraw it)."""
    from diffcodec.coding import ans, lossless

    prior = make_tiny_prior()
    prior.digest = "77" * 32
    images = random_images(40, seed=12).numpy()
    blob, st = compress(prior, images, [f"r{i:02d}.png" for i in range(40)], CodecParams(steps=4, threads=1, max_batch=64))
    header, _ = container.unpack(blob)
    sizes = lossless.batch_sizes(40 - len(header.boot), 64, header.ramp)
    assert sizes[0] == 1 and len(sizes) > 3 and max(sizes) < 40 - len(header.boot)
    assert st.initial_bits <= ans.WORD_BITS * (ans.MARGIN_WORDS + 1) + 8 * 64  # about one 8x8 tile's dip at most
    assert np.array_equal(decompress(prior, blob)[0], images)
