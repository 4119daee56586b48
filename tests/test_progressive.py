"""The progressive codec: arithmetic coder prefix rule, channel simulation fidelity, round trips, prefixes,
targets, bad files, determinism across processes."""

from __future__ import annotations

import dataclasses
import doctest
import math
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from diffcodec.checkpoint import load_prior, save_prior
from diffcodec.coding import arith, container, progressive, progressive_file, progressive_finish, rcc
from diffcodec.coding.arith import ArithmeticDecoder, ArithmeticEncoder, FrequencyTable, OutOfBits
from diffcodec.coding.progressive import ProgressiveParams, Target, decode, encode
from diffcodec_cli.main import main

from .conftest import make_tiny_prior

FAST = ProgressiveParams(steps=8, chunk_bits=6, margin=3, max_search_bits=12)
FAST_END = dataclasses.replace(FAST, finish="end")  # the whole chain to x_1, then P(x_0|x_1)


@pytest.fixture
def prior(one_thread):
    p = make_tiny_prior()
    p.digest = "ab" * 32
    return p


def _image(seed: int, shape=(1, 8, 8)) -> np.ndarray:
    """A smooth image with some texture (random pixels would make every step carry hundreds of bits)."""
    rng = np.random.default_rng(seed)
    c, h, w = shape
    yy, xx = np.mgrid[0:h, 0:w]
    base = 128 + 90 * np.sin(xx / 3.0 + seed) * np.cos(yy / 4.0)
    return np.clip(base[None] + rng.normal(0, 12, (c, h, w)), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("module", [arith, rcc, progressive, progressive_file, progressive_finish])
def test_module_docstring_round_trips_run(module):
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def test_arithmetic_prefix_rule_never_returns_a_wrong_symbol():
    """Cut anywhere, a prefix-mode decoder returns a prefix of the true symbols, then OutOfBits;
    terminated at any snapshot, the stream decodes exactly the symbols before it."""
    rng = np.random.default_rng(3)
    for _ in range(150):
        tables = [FrequencyTable.from_probs(rng.random(rng.integers(2, 50)) ** 4) for _ in range(4)]
        enc, syms, snaps = ArithmeticEncoder(), [], []
        for _ in range(rng.integers(1, 50)):
            t = int(rng.integers(0, 4))
            s = int(rng.integers(0, len(tables[t].freqs)))
            enc.encode_symbol(tables[t], s)
            syms.append((t, s))
            snaps.append(enc.snapshot())
        cut = int(rng.integers(0, len(syms)))
        data, nbits = enc.terminated(snaps[cut])
        dec = ArithmeticDecoder(data, complete=True)
        assert [dec.decode_symbol(tables[t]) for t, _ in syms[: cut + 1]] == [s for _, s in syms[: cut + 1]]
        assert dec.end_bits() == nbits
        full, _ = enc.terminated(enc.snapshot())
        dec = ArithmeticDecoder(full[: int(rng.integers(0, len(full) + 1))], complete=False)
        got = []
        try:
            for t, _ in syms:
                got.append(dec.decode_symbol(tables[t]))
        except OutOfBits:
            pass
        assert got == [s for _, s in syms[: len(got)]]


def test_arithmetic_cost_is_close_to_the_information_content():
    """Coding symbols drawn from the table costs their information content plus at most the
    termination (≤ pending + 2 bits) and a rounding of < 0.01 bit per symbol at 16-bit frequencies."""
    rng = np.random.default_rng(5)
    table = FrequencyTable.from_probs(rng.random(30) ** 3)
    p = table.freqs / table.total
    symbols = rng.choice(30, size=3000, p=p)
    enc = ArithmeticEncoder()
    for s in symbols:
        enc.encode_symbol(table, int(s))
    _, nbits = enc.terminated(enc.snapshot())
    ideal = float(-np.log2(p[symbols]).sum())
    assert ideal - 1 <= nbits <= ideal + 0.01 * len(symbols) + 40


def _pfr_stats(margin: float, reps: int = 250, d: int = 16, seed: int = 0):
    """Truncated PFR on synthetic chunks: q = N(μ_q, 1), p = N(0, 1.2²), KL ≈ 5 bits."""
    gen = torch.Generator().manual_seed(seed)
    sd_p = torch.full((d,), 1.2, dtype=torch.float64)
    mu_p = torch.zeros(d, dtype=torch.float64)
    num = den = z_sum = z_sq = 0.0
    costs, kls = [], []
    for r in range(reps):
        mu_q = 0.6 * torch.randn(d, generator=gen, dtype=torch.float64)
        kl = rcc.kl_bits(mu_q, 1.0, mu_p, sd_p)
        a, b = rcc.log_weight_coefs(mu_q, 1.0, mu_p, sd_p)
        pick = rcc.select(a, b, seed=r, kl_bits=kl, margin=margin, private=10_000 + r)
        x = mu_p + sd_p * pick.eps.double()
        z = x - mu_q
        num += float(((x - mu_p) * (mu_q - mu_p)).sum())
        den += float(((mu_q - mu_p) ** 2).sum())
        z_sum += float(z.sum())
        z_sq += float((z * z).sum())
        costs.append(math.log2(pick.index))
        kls.append(kl)
    n = reps * d
    return num / den, z_sum / n, z_sq / n - (z_sum / n) ** 2, float(np.mean(costs)), float(np.mean(kls))


def test_channel_simulation_is_faithful_with_a_margin_and_biased_without():
    """With 2^(KL + 6) candidates the sent samples are samples of q: slope of (x − μ_p) on
    (μ_q − μ_p) within 0.06 of 1 (its standard error here is about 0.02) and z variance within 0.08
    of 1; with no margin the truncation visibly pulls samples towards p (slope about 0.90 on 1,500
    chunks, so below 0.95 here)."""
    slope, z_mean, z_var, log_index, kl = _pfr_stats(margin=6)
    assert abs(slope - 1) < 0.06 and abs(z_mean) < 0.05 and abs(z_var - 1) < 0.08
    assert log_index < kl + 1  # PFR prefers early candidates: E log2 i* stays near or below the KL
    slope0, *_ = _pfr_stats(margin=0)
    assert slope0 < 0.95


@pytest.mark.parametrize("variance", ["learned", "small", "large"])
def test_round_trip_bit_exact_for_every_variance_mode(one_thread, variance):
    prior = make_tiny_prior(variance)
    prior.digest = "cd" * 32
    image = _image(1)
    for params in (FAST, FAST_END):
        enc = encode(prior, image, params)
        dec = decode(prior, enc.data)
        assert dec.lossless and dec.complete and np.array_equal(dec.image, image)
        assert enc.stop == FAST.steps and enc.steps[-1].n == FAST.steps
    assert enc.exact_from == FAST.steps - 1  # "end" finishes from x_1


def test_odd_sized_and_colour_images_round_trip(one_thread):
    params = ProgressiveParams(steps=8, chunk_bits=6, margin=2, max_search_bits=10)
    gray = make_tiny_prior()
    gray.digest = "01" * 32
    image = _image(2, (1, 19, 13))  # 3 × 2 tiles of 8×8, edges padded
    assert np.array_equal(decode(gray, encode(gray, image, params).data).image, image)
    colour = make_tiny_prior(channels=3)
    colour.digest = "02" * 32
    image = _image(3, (3, 9, 10))
    assert np.array_equal(decode(colour, encode(colour, image, params).data).image, image)
    with pytest.raises(ValueError, match="RGB but the prior codes grayscale"):
        encode(gray, image, params)


def test_every_truncation_decodes_and_error_falls_as_steps_arrive(prior):
    image = _image(4)
    data = encode(prior, image, FAST_END).data
    steps, errors = [], []
    for n in range(len(data) + 1):
        if n < 8:  # inside the fixed header fields: a one-line error, never a wrong picture
            with pytest.raises(ValueError):
                decode(prior, data[:n])
            continue
        try:
            res = decode(prior, data[:n])
        except ValueError as err:
            assert "truncated inside its header" in str(err)
            continue
        steps.append(res.steps_decoded)
        errors.append(float(((res.image.astype(float) - image) ** 2).mean()))
        assert res.complete == (n == len(data))
    assert steps == sorted(steps) and steps[-1] == FAST.steps and errors[-1] == 0
    assert steps[0] < FAST.steps - 1
    first, before_last = errors[0], [e for s, e in zip(steps, errors) if s == FAST.steps - 1]
    assert before_last and before_last[0] < first  # x̂_0(x_1) is far better than x̂_0(x_K)


def test_encoding_is_deterministic_and_targets_are_met(prior):
    image = _image(5)
    a, b = encode(prior, image, FAST), encode(prior, image, FAST)
    assert a.data == b.data
    mid = a.steps[len(a.steps) // 2]
    target = progressive.psnr(mid.sq_err / image.size)
    lossy = encode(prior, image, FAST, Target(psnr=target))
    res = decode(prior, lossy.data)
    assert res.complete and not res.lossless
    mse = float(((res.image.astype(float) - image) ** 2).mean())
    assert progressive.psnr(mse) >= target - 1e-9
    budget = a.steps[-2].file_bytes + 1
    small = encode(prior, image, FAST, Target(max_bytes=budget))
    assert len(small.data) <= budget and decode(prior, small.data).complete
    with pytest.raises(ValueError, match="no file fits"):
        encode(prior, image, FAST, Target(max_bytes=10))


def test_bad_files_fail_with_one_line_errors(prior):
    data = encode(prior, _image(6), FAST).data
    corrupted = bytearray(data)
    corrupted[len(data) // 2] ^= 0x10
    with pytest.raises(ValueError, match="checksum|desynchronized|corrupted|out of range"):
        decode(prior, bytes(corrupted))
    start = len(data) - len(progressive_file.unpack(data)[1]) - 4  # the body's first byte
    for pos in np.linspace(start, len(data) - 5, 12).astype(int):  # a damaged complete file is never shown as partial
        flipped = bytearray(data)
        flipped[pos] ^= 0x01
        with pytest.raises(ValueError, match="checksum|desynchronized|corrupted|out of range"):
            decode(prior, bytes(flipped))
    header = bytearray(data)
    header[10] ^= 0x01
    with pytest.raises(ValueError, match="header checksum"):
        decode(prior, bytes(header))
    with pytest.raises(ValueError, match="extra bytes"):
        decode(prior, data + b"\0")
    other = make_tiny_prior(seed=1)
    other.digest = "ef" * 32
    with pytest.raises(ValueError, match="another prior"):
        decode(other, data)
    with pytest.raises(ValueError, match="bad magic"):
        decode(prior, b"PNG not a progressive file")
    with pytest.raises(ValueError, match="diffcodec decompress"):
        decode(prior, b"DCL\x02" + b"\0" * 40)
    with pytest.raises(ValueError, match="diffcodec decode"):  # and the other way round
        container.unpack(data)
    h, body, _ = progressive_file.unpack(data)
    on_cuda = progressive_file.pack(progressive_file.replace(h, cuda=True), body, np.zeros((1, 8, 8), np.uint8))
    with pytest.raises(ValueError, match="encoded on CUDA"):
        decode(prior, on_cuda)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")
def test_cuda_round_trip(one_thread):
    prior = make_tiny_prior().cuda()
    prior.digest = "ab" * 32
    image = _image(9)
    data = encode(prior, image, FAST).data
    assert np.array_equal(decode(prior, data).image, image)


def test_fresh_process_with_other_threads_regenerates_candidates_and_pixels(prior, tmp_path):
    path = tmp_path / "p.safetensors"
    save_prior(prior, path)
    loaded = load_prior(path)
    image = _image(7)
    data = encode(loaded, image, FAST).data
    (tmp_path / "x.dcp").write_bytes(data)
    eps = rcc.candidate(12345, 77, 40)
    script = textwrap.dedent(f"""
        import numpy as np, torch, hashlib
        torch.set_num_threads(2)
        from diffcodec.checkpoint import load_prior
        from diffcodec.coding import rcc
        from diffcodec.coding.progressive import decode
        res = decode(load_prior({str(path)!r}), open({str(tmp_path / 'x.dcp')!r}, 'rb').read())
        print(res.complete, hashlib.sha256(res.image.tobytes()).hexdigest())
        print(hashlib.sha256(rcc.candidate(12345, 77, 40).numpy().tobytes()).hexdigest())
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout.split()
    import hashlib

    assert out[0] == "True" and out[1] == hashlib.sha256(image.tobytes()).hexdigest()
    assert out[2] == hashlib.sha256(eps.numpy().tobytes()).hexdigest()


def test_cli_encode_decode_round_trip_and_errors(prior, tmp_path):
    path = tmp_path / "p.safetensors"
    save_prior(prior, path)
    image = _image(8, (1, 11, 9))
    Image.fromarray(image[0]).save(tmp_path / "img.png")
    runner = CliRunner()
    common = ["--prior", str(path)]
    r = runner.invoke(main, ["encode", str(tmp_path / "img.png"), "-o", str(tmp_path / "img.dcp"), "--steps", "6",
                             "--chunk-bits", "6", "--margin", "3", "--json", *common])
    assert r.exit_code == 0, r.output
    import json

    rec = json.loads(r.output)
    assert rec["lossless"] and rec["file_bytes"] == (tmp_path / "img.dcp").stat().st_size
    assert {"bits_per_dim", "kl_bits", "rmse", "psnr"} <= set(rec["steps"][0])
    r = runner.invoke(main, ["decode", str(tmp_path / "img.dcp"), "-o", str(tmp_path / "out.png"), *common])
    assert r.exit_code == 0, r.output
    assert np.array_equal(np.asarray(Image.open(tmp_path / "out.png"))[None], image)
    r = runner.invoke(main, ["decode", str(tmp_path / "img.dcp"), "-o", str(tmp_path / "out.png"), *common])
    assert r.exit_code == 1 and "--force" in r.output
    (tmp_path / "cut.dcp").write_bytes((tmp_path / "img.dcp").read_bytes()[:-3])
    r = runner.invoke(main, ["decode", str(tmp_path / "cut.dcp"), "-o", str(tmp_path / "cut.png"), *common])
    assert r.exit_code == 0 and "partial" in r.output
    for bad, msg in [(tmp_path / "missing.dcp", "no such file"), (tmp_path / "img.png", "bad magic")]:
        r = runner.invoke(main, ["decode", str(bad), "-o", str(tmp_path / "bad.png"), *common])
        assert r.exit_code == 1 and msg in r.output and len(r.output.strip().splitlines()) == 1
        assert not (tmp_path / "bad.png").exists()
    r = runner.invoke(main, ["decode", str(tmp_path / "img.png"), "-o", str(tmp_path / "img.png"), *common])
    assert r.exit_code == 1 and "bad magic" in r.output  # the input is judged before the output's existence
    r = runner.invoke(main, ["encode", str(tmp_path / "img.png"), "--psnr", "30", "--bytes", "9", *common])
    assert r.exit_code != 0 and "at most one" in r.output
    r = runner.invoke(main, ["encode", str(tmp_path / "img.png"), "-o", str(tmp_path / "text.dcp"), "--steps", "6",
                             "--chunk-bits", "6", "--margin", "3", *common])
    rows = [line.split() for line in r.output.splitlines() if line.strip()[:1].isdigit()]
    in_file = [s["n"] for s in rec["steps"] if s["in_file"]]
    assert [int(row[0]) for row in rows] == in_file and rows[-1][-1] == "exact"  # fewer than 12: every one shown


def test_embedded_prior_round_trip_and_psnr_target(one_thread):
    """The shipped prior on a real Fashion-MNIST example, 20 steps (fast): exact, and --psnr meets its target."""
    prior = load_prior()
    from diffcodec.images import read_image
    from pathlib import Path

    image = read_image(Path(__file__).parent.parent / "examples" / "fashion" / "test-00.png")
    params = ProgressiveParams(steps=20)
    enc = encode(prior, image, params)
    assert np.array_equal(decode(prior, enc.data).image, image)
    lossy = encode(prior, image, params, Target(psnr=25.0))
    res = decode(prior, lossy.data)
    mse = float(((res.image.astype(float) - image) ** 2).mean())
    assert res.complete and progressive.psnr(mse) >= 25.0 and len(lossy.data) < len(enc.data)


def test_forged_header_fields_with_valid_checksums_never_give_a_wrong_image(prior):
    """Every header byte set to other values, both checksums recomputed: a one-line ValueError, or the exact image."""
    import binascii
    import struct
    import zlib

    image = _image(9)
    data = encode(prior, image, FAST).data
    header, _, _ = progressive_file.unpack(data)
    end = len(progressive_file._header_bytes(header))  # header with its CRC-16
    pixels = progressive_file._pixel_bytes(image)
    for pos in range(end - 2):
        for value in {0, 1, 2, 0x7F, 0x80, 0xFF, data[pos] ^ 1, data[pos] ^ 0x04, data[pos] ^ 0x20}:
            if value == data[pos]:
                continue
            forged = bytearray(data)
            forged[pos] = value
            forged[end - 2 : end] = struct.pack("<H", binascii.crc_hqx(bytes(forged[: end - 2]), 0xFFFF))
            forged[-4:] = struct.pack("<I", zlib.crc32(pixels, zlib.crc32(bytes(forged[:-4]))))
            try:
                res = decode(prior, bytes(forged))
            except ValueError as err:
                assert "\n" not in str(err)
                continue
            if res.complete:  # a verified file must be the image it was made from
                assert np.array_equal(res.image, image), (pos, value)


def test_exact_end_comes_from_the_cheapest_state(prior):
    """--finish best: no larger than walking to x_1 (up to the range coder's rounding), and prefixes still decode."""
    image = _image(10, (1, 12, 12))
    best, end = encode(prior, image, FAST), encode(prior, image, FAST_END)
    assert best.exact_from is not None and best.exact_from <= FAST.steps - 1
    assert len(best.data) <= len(end.data) + 4
    assert np.array_equal(decode(prior, best.data).image, image)
    header = progressive_file.unpack(best.data)[0]
    assert header.stop == best.exact_from and header.finish > 0
    shown = decode(prior, best.data, steps=best.exact_from)  # the last step before x_0: a reconstruction
    assert not shown.lossless and not shown.complete and shown.steps_decoded == best.exact_from
    assert decode(prior, best.data[:-5]).complete is False  # x_0's segment cut: the last complete step
    lossy = encode(prior, image, FAST, Target(psnr=99.0))  # never reached: the exact file
    assert lossy.data == best.data


def test_search_threads_do_not_change_the_file(prior):
    image = _image(11)
    one = encode(prior, image, dataclasses.replace(FAST, search_threads=1)).data
    assert encode(prior, image, dataclasses.replace(FAST, search_threads=2)).data == one


@pytest.mark.parametrize("engine", ["float32", "onnxruntime", "mixed"])
def test_the_file_records_its_engine_and_the_decoder_runs_it(prior, engine):
    if engine != "float32":
        pytest.importorskip("onnxruntime")
    image = _image(11)
    res = encode(prior, image, dataclasses.replace(FAST, engine=engine))
    header, _, _ = progressive_file.unpack(res.data)
    assert progressive.CODING_ENGINES[header.engine].value == engine == res.engine
    out = decode(prior, res.data)
    assert out.complete and np.array_equal(out.image, image) and out.engine == engine
    other = "onnxruntime" if engine == "float32" else "float32"
    with pytest.raises(ValueError, match=f"engine {engine}.*engine {other}"):
        decode(prior, res.data, engine=other)


def test_onnxruntime_and_float32_files_differ_only_in_rounding(prior):
    """The engines compute the same network (ORT differs from torch by about 1e-6), so the two files
    of one image are about the same size; each decodes only under its own engine (test above)."""
    pytest.importorskip("onnxruntime")
    image = _image(12)
    sizes = [len(encode(prior, image, dataclasses.replace(FAST, engine=e)).data) for e in ("float32", "onnxruntime")]
    assert abs(sizes[0] - sizes[1]) <= 0.1 * sizes[0]


def test_candidate_words_are_splitmix64_in_numpy_torch_and_numba():
    """The counter-based generator behind the candidates: numpy (the decoder) and torch (the CUDA
    search) give splitmix64's words, checked against Python integers; a candidate's codes are the
    bytes of its words."""
    from diffcodec.coding import candidates

    def reference(seed, n):
        z = (seed + (n + 1) * candidates.GAMMA) % 2**64
        z = ((z ^ (z >> 30)) * candidates.MIX1) % 2**64
        z = ((z ^ (z >> 27)) * candidates.MIX2) % 2**64
        return z ^ (z >> 31)

    seed = 0x7FEDCBA987654321
    got = candidates.words(seed, 1000, 50)
    assert [int(v) for v in got] == [reference(seed, 1000 + i) for i in range(50)]
    assert np.array_equal(candidates.words_torch(seed, torch.arange(1000, 1050)).numpy().view(np.uint64), got)
    w = candidates.words(seed, 2 * 2, 2)  # candidate 3 of 13 dimensions: words 4 and 5
    assert candidates.codes(seed, 3, 13).tolist() == [(int(w[j // 8]) >> (8 * (j % 8))) & 255 for j in range(13)]


@pytest.mark.parametrize("d", [3, 8, 37, 300])
def test_searches_find_the_argmax_over_the_candidates_the_decoder_regenerates(d):
    """Both searches (numba on 1-3 threads, torch blocks) return the first best of
    Σ a m² + b m − ln T over candidates 1..N, computed here by brute force from the decoder's codes
    and the arrival times; with the PFR ceiling they stop early and still agree."""
    from diffcodec.coding import candidates

    gen = np.random.default_rng(d)
    a = (-0.2 * gen.random(d) - 0.01).astype(np.float32)
    b = gen.standard_normal(d).astype(np.float32)
    means = rcc.BIN_MEANS.astype(np.float32)
    n, seed, private = 3000, 99 + d, 5 + d
    m = means[np.stack([candidates.codes(seed, i, d) for i in range(1, n + 1)])].astype(np.float64)
    score = (m * m) @ a + m @ b - np.log(candidates.arrival_times(private, 0, n).numpy())
    best = int(np.argmax(score)) + 1
    ceiling = rcc.weight_ceiling(torch.from_numpy(a).double(), torch.from_numpy(b).double())
    for limit in (math.inf, ceiling):
        got = candidates.search_torch(torch.from_numpy(a), torch.from_numpy(b), torch.from_numpy(means), seed,
                                      private, n, limit)
        assert got[0] == best and (got[1] == n or limit < math.inf)
        if candidates.numba_available():
            for workers in (1, 2, 3):
                assert candidates.search_cpu(a, b, means, seed, private, n, limit, workers)[0] == best



def _finish_case(seed: int, shape, trailing_zero_rows: int = 0):
    """Tiles [B, C, t, u], an x̂_0 whose error is smooth down the columns, and a v (the network's variance output)."""
    rng = np.random.default_rng(seed)
    tiles = rng.integers(0, 256, shape).astype(np.uint8)
    if trailing_zero_rows:
        tiles[-1, -1, -trailing_zero_rows:] = 0
    x0 = torch.from_numpy(tiles).double() / 127.5 - 1.0
    drift = torch.from_numpy(np.cumsum(rng.normal(0, 0.05, shape), axis=-2))  # correlated from row to row
    return tiles, (x0 - drift).float(), torch.from_numpy(rng.normal(0, 1, shape)).float()


@pytest.mark.parametrize("shape", [(1, 1, 12, 12), (3, 3, 8, 8)])
def test_residual_finish_round_trips_and_wins_on_smooth_errors(shape):
    """Code 19 (x̂_0 + a·residual above, row by row): picked when x̂_0's error runs down the columns, decoded
    exactly (several tiles and channels), its size near the estimate best() compared states by."""
    f = progressive_finish
    tiles, x0_hat, v = _finish_case(3, shape)
    fin = f.best(tiles, 5, 0.9, x0_hat, v=v)
    assert fin.code == f.RESIDUAL and fin.weights[0] >= 4
    data, bits = f.encode_pixels(tiles, fin)
    assert abs(bits - fin.bits) < 1e-6 * bits and 8 * len(data) <= bits + f.RANGE_CODER_BITS
    assert np.array_equal(f.decode_pixels(data, f.RESIDUAL, 5, 0.9, x0_hat, tiles.shape, v=v), tiles)
    plain = f.model(f.CLASSES, 5, 0.9, x0_hat, v=v, scales=fin.scales)
    assert 8 * len(f.encode_pixels(tiles, plain)[0]) > 8 * len(data) + 20  # the correction is worth its 3 bits


def test_a_final_run_of_zero_pixels_is_nearly_free_and_estimated_so():
    """The file drops the range coder's trailing zero bytes and the decoder reads zeros back: pixels of value 0
    at the end cost almost nothing, whatever their model; best() leaves them out of its estimate."""
    f = progressive_finish
    tiles, x0_hat, v = _finish_case(4, (1, 1, 16, 16), trailing_zero_rows=6)
    x0_hat[..., -6:, :] = 0.0  # the model puts those pixels near grey: several bits each in the ideal
    for fin in (f.best(tiles, 5, 0.9, x0_hat, v=v), f.model(f.DIRECT + 7, 5, 0.9, x0_hat)):
        data, ideal = f.encode_pixels(tiles, fin)
        assert ideal > 8 * len(data) + 200  # the run's ideal bits were not spent
        assert np.array_equal(f.decode_pixels(data, fin.code, 5, 0.9, x0_hat, tiles.shape, v=v), tiles)
    fin = f.best(tiles, 5, 0.9, x0_hat, v=v)
    assert abs(8 * len(f.encode_pixels(tiles, fin)[0]) - fin.bits) <= f.RANGE_CODER_BITS


def test_version_4_files_still_decode(one_thread):
    """Format 5 added finish code 19 and the turned tiles; a version-4 file (made by diffcodec 7afc92e with the
    tiny prior beside it in tests/data) decodes as before, and a version-4 header that claims code 19 is refused."""
    import binascii
    import struct
    import zlib
    from pathlib import Path

    image = _image(9)
    prior = load_prior(Path(__file__).parent / "data" / "tiny_prior.safetensors")
    data = (Path(__file__).parent / "data" / "progressive_v4_tiny.dcp").read_bytes()
    header = progressive_file.unpack(data)[0]
    assert header.version == 4 and 0 < header.finish <= progressive_finish.CLASSES
    assert np.array_equal(decode(prior, data).image, image)
    assert progressive_file.unpack(encode(prior, image, FAST).data)[0].version == progressive_file.VERSION == 5
    end = len(progressive_file._header_bytes(header))
    forged = bytearray(data)
    forged[5] = (forged[5] & ~(31 << 2)) | (progressive_finish.RESIDUAL << 2)  # the flags varint's finish bits
    forged[end - 2 : end] = struct.pack("<H", binascii.crc_hqx(bytes(forged[: end - 2]), 0xFFFF))
    forged[-4:] = struct.pack("<I", zlib.crc32(progressive_file._pixel_bytes(image), zlib.crc32(bytes(forged[:-4]))))
    with pytest.raises(ValueError, match="impossible finish"):
        decode(prior, bytes(forged))
    with pytest.raises(ValueError, match="unsupported progressive file version 3"):
        decode(prior, data[:2] + b"\x03" + data[3:])


def test_tiles_are_turned_so_the_free_run_of_zeros_is_longest():
    """Black columns at the right of the last tile: the transposed order ends in them (orientation 2), and
    every orientation round-trips on tiles that are not square (the decoder turns them back)."""
    f = progressive_finish
    tiles, x0_hat, v = _finish_case(5, (2, 3, 6, 10))
    tiles[-1, -1, :, -3:] = 0
    tiles[-1, -1, -1, :-3] = 200  # the bottom row is not black: as they are, the run is 3 pixels
    x0_hat[-1, -1, :, -3:] = 0.0
    assert f._longest_free_run(tiles) == 2
    fin = f.best(tiles, 5, 0.9, x0_hat, v=v)
    assert fin.orient == 2
    data, _ = f.encode_pixels(tiles, fin)
    assert np.array_equal(f.decode_pixels(data, fin.code, 5, 0.9, x0_hat, tiles.shape, v=v), tiles)
    for o in range(f.ORIENTATIONS):
        assert np.array_equal(f.unorient(f.orient(tiles, o), o), tiles)
        assert torch.equal(f.unorient(f.orient(x0_hat, o), o), x0_hat)
        turned = f.model(f.DIRECT + 5, 5, 0.9, f.orient(x0_hat, o))
        turned.orient = o
        data, _ = f.encode_pixels(tiles, turned)
        assert np.array_equal(f.decode_pixels(data, turned.code, 5, 0.9, x0_hat, tiles.shape), tiles)
