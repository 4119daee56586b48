"""The bench figures on a tiny prior and a few 8×8 images, so that they cannot rot.

``python -m bench all --quick`` runs end to end in seconds here; the classic codecs that need the
``bench`` extra (imagecodecs: JPEG XL, JPEG-LS) are skipped when it is missing, and BD-rates need the
``bjontegaard`` package (in the test extra).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from bench import classic
from bench.__main__ import main
from bench.rd import progressive_curve
from bench.strip import IDEAL_SOURCE, STRIP_NPZ
from diffcodec.checkpoint import save_prior

from .conftest import make_tiny_photo_prior, make_tiny_prior

pytestmark = pytest.mark.usefixtures("one_thread")


def smooth_images(n: int = 4, size: int = 8, seed: int = 0) -> np.ndarray:
    """[n, 1, size, size] uint8: blurred blobs, the kind of content lossy codecs are made for."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    out = []
    for _ in range(n):
        cy, cx, r = rng.uniform(0.3, 0.7, 3)
        img = 200 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (0.1 * r)) + rng.normal(0, 8, (size, size))
        out.append(np.clip(img, 0, 255).astype(np.uint8))
    return np.stack(out)[:, None]


@pytest.fixture
def tiny_setup(tmp_path):
    prior_path = tmp_path / "tiny.safetensors"
    digest = save_prior(make_tiny_prior(), prior_path)
    data = tmp_path / "images.npy"
    np.save(data, smooth_images())
    return {"prior": str(prior_path), "data": str(data), "out": tmp_path / "results", "digest": digest}


def run(setup, *stages, extra=()):
    return main([*stages, "--quick", "--num", "4", "--prior", setup["prior"], "--data", setup["data"], "--out", str(setup["out"]), "--quiet", *extra])


def test_bench_all_quick(tiny_setup):
    pytest.importorskip("bjontegaard")
    results = run(tiny_setup, "all")
    out = tiny_setup["out"]
    for name in ("classic_lossy", "ideal_rd", "rd", "lossless_table", "timestep_terms", "strip"):
        body = json.loads((out / f"{name}.json").read_text())
        prov = body["provenance"]
        assert prov["prior_digest"] == tiny_setup["digest"] and prov["num_images"] == 4, name
        assert prov["machine"]["cpu"] and prov["machine"]["torch"] and "Pillow" in prov["codecs"], name
        assert "commit" in prov
    for png in ("classic_lossy", "rd", "rd_panels", "lossless_table", "timestep_terms", "strip"):
        assert (out / f"{png}.png").stat().st_size > 1000, png

    lossy = results["classic"]["codecs"]
    assert {"jpeg", "webp"} <= set(lossy)
    for res in lossy.values():
        pts = res["points"]
        assert all(p["bits_per_dim"] > 0 and np.isfinite(p["psnr"]) for p in pts)
        # a higher JPEG/WebP quality never gives a smaller mean file on these images
        if res["param"] == "quality":
            assert pts[-1]["bits_per_dim"] > pts[0]["bits_per_dim"] and pts[-1]["psnr"] > pts[0]["psnr"]

    ideal = results["ideal"]
    assert ideal["num_steps"] == 20 and len(ideal["steps"]) == 20
    rates = [s["cum_rate_bpd"] for s in ideal["steps"]]  # noisiest first: the rate only grows
    assert all(b >= a for a, b in zip(rates, rates[1:]))
    assert ideal["steps"][-1]["cum_rate_bpd"] + ideal["decoder_bpd"] == pytest.approx(ideal["total_bpd"], rel=1e-9)

    table = results["lossless"]["table"]
    labels = [row["label"] for row in table]
    assert any("progressive" in label for label in labels)  # the slot exists, empty until encode exists
    png = results["lossless"]["classic"]["png"]
    assert png["one_file_per_image"] > 0 and png["whole_set_one_file"] > 0
    assert results["lossless"]["bitsback_chained"]["num_images"] == 4  # computed: no lossless.json for this prior

    assert "diffcodec ideal" in results["rd"]["bd_rates"]
    if "progressive" in results:  # the real progressive files fill the slots of rd and strip
        assert results["rd"]["progressive_included"] and results["strip"]["diffcodec_source"] == STRIP_NPZ
    else:
        assert results["strip"]["diffcodec_source"] == IDEAL_SOURCE


def fake_progressive(digest, data, indices, K=20, dims=64):
    """progressive.json as the progressive stage writes it: K + 1 points per image (n = 0 … K), the
    last one exact."""
    images = []
    for i in indices:
        pts = [{"step": n, "bytes": 2 + 2 * n + i, "bits_per_dim": 8 * (2 + 2 * n + i) / dims, "psnr": 15 + 1.5 * n, "rmse": 255 / 10 ** ((15 + 1.5 * n) / 20)}
               for n in range(K)]
        pts.append({"step": K, "bytes": 60, "bits_per_dim": 8 * 60 / dims, "psnr": None, "rmse": 0.0})  # exact: dropped
        images.append({"index": i, "points": pts, "lossless_bytes": 60})
    return {"prior_digest": digest, "data": data, "num_dims": dims, "images": images}


def test_progressive_slot(tiny_setup):
    """A progressive.json in the results folder becomes a curve on the RD plot and a BD-rate row;
    made on some of the images only, it is compared with the classic codecs on those images."""
    pytest.importorskip("bjontegaard")
    out = tiny_setup["out"]
    run(tiny_setup, "classic")
    (out / "progressive.json").write_text(json.dumps(fake_progressive(tiny_setup["digest"], tiny_setup["data"], range(4))))
    results = run(tiny_setup, "rd", "lossless")
    rd = results["rd"]
    assert rd["progressive_included"] and rd["bd_rates"]["diffcodec encode"]["images"] == 4
    curve = next(c for c in rd["curves"] if c["label"] == "diffcodec encode")
    assert len(curve["bits_per_dim"]) == 20 and curve["t"][0] == 20 and curve["t"][-1] == 1  # n = 0 is x_T
    assert results["lossless"]["progressive_single"]["bits_per_dim"] == pytest.approx(7.5)

    (out / "progressive.json").write_text(json.dumps(fake_progressive(tiny_setup["digest"], tiny_setup["data"], [1, 3])))
    rd = run(tiny_setup, "rd")["rd"]
    assert rd["bd_rates"]["diffcodec encode"]["images"] == 2 and rd["bd_rates"]["diffcodec ideal"]["images"] == 4


def test_classic_subsets_match_a_direct_sweep(tiny_setup):
    """The classic curves of some images, summarized from the per-image sweep, equal a sweep of
    those images alone."""
    from bench.context import Context

    run(tiny_setup, "classic")
    ctx = Context(out=tiny_setup["out"], data=tiny_setup["data"], num=4, quick=True, prior_path=tiny_setup["prior"], verbose=False)
    sub = classic.subset_codecs(ctx, [1, 3])
    jpeg = classic.LOSSY_BY_KEY["jpeg"]
    direct, _ = classic.sweep(jpeg, ctx.images[[1, 3]], jpeg.quick_sweep())
    for a, b in zip(sub["jpeg"]["points"], direct["points"]):
        assert a["bits_per_dim"] == b["bits_per_dim"] and a["psnr"] == pytest.approx(b["psnr"], abs=1e-5)


def test_progressive_curve_means_points_per_image():
    curve = progressive_curve([[(1.0, 20.0), (2.0, 30.0)], [(3.0, 24.0), (4.0, 34.0, 5.0)]])
    assert curve.label == "diffcodec encode"
    np.testing.assert_allclose(curve.bits_per_dim, [2.0, 3.0])
    np.testing.assert_allclose(curve.psnr, [22.0, 32.0])
    with pytest.raises(ValueError, match="same number of points"):
        progressive_curve([[(1.0, 20.0)], [(1.0, 20.0), (2.0, 25.0)]])


def test_bd_rate_of_a_scaled_curve():
    """A test curve needing 0.8× the anchor's rate at every PSNR has a BD-rate of exactly −20 %,
    and the anchor against itself 0 %; BD-PSNR of a curve shifted up by 1.5 dB is +1.5 dB."""
    pytest.importorskip("bjontegaard")
    from bench.bdrate import bd_psnr, bd_rate, compare

    rate = np.array([0.5, 1.0, 1.6, 2.5, 4.0])
    quality = np.array([25.0, 29.0, 32.5, 36.0, 40.0])
    assert bd_rate((rate, quality), (0.8 * rate, quality)) == pytest.approx(-20.0, abs=1e-9)
    assert bd_rate((rate, quality), (rate, quality)) == pytest.approx(0.0, abs=1e-9)
    assert bd_psnr((rate, quality), (rate, quality + 1.5)) == pytest.approx(1.5, abs=1e-9)
    # a dense test curve (piecewise linear in log rate, so ≈ −20 %) with a long tail far below the
    # anchor's range, like the ideal curve from 5 dB: the tail beyond one point outside is ignored
    dense_r = np.geomspace(0.4, 3.2, 120)
    dense_q = np.interp(np.log(dense_r), np.log(0.8 * rate), quality)
    tail_r, tail_q = np.geomspace(0.001, 0.39, 30), np.linspace(5.0, 24.9, 30)
    plain = bd_rate((rate, quality), (dense_r, dense_q))
    full = compare((rate, quality), (np.r_[tail_r, dense_r], np.r_[tail_q, dense_q]))
    assert plain == pytest.approx(-20.0, abs=1.0)
    assert full["bd_rate_percent"] == pytest.approx(plain, abs=1e-9)
    assert full["overlap_psnr_db"] == pytest.approx([25.0, 40.0])
    assert bd_rate((rate, quality), (rate, quality + 100)) is None  # no overlap


def test_rd_front_and_rate_at_psnr():
    r, p = classic.rd_front([3.0, 1.0, 2.0, 2.5, 4.0], [33.0, 25.0, 30.0, 29.0, 40.0])
    np.testing.assert_array_equal(r, [1.0, 2.0, 3.0, 4.0])  # (2.5, 29) is dominated by (2.0, 30)
    assert classic.rate_at_psnr(r, p, 31.5) == pytest.approx(2.5)
    assert classic.rate_at_psnr(r, p, 45.0) is None


def test_tile_layout():
    images = np.arange(5 * 2 * 3, dtype=np.uint8).reshape(5, 1, 2, 3)
    mosaic = classic.tile(images)
    assert mosaic.shape == (1, 2 * 2, 3 * 3)  # 3 columns, 2 rows, one spare black tile
    np.testing.assert_array_equal(mosaic[:, 2:4, 3:6], images[4])
    assert not mosaic[:, 2:4, 6:9].any()


def test_lossy_files_decode_and_measure():
    """Every lossy file is decoded and measured: a top-quality JPEG is close, a bottom-quality one is not."""
    image = smooth_images(1, size=16)[0]
    best = classic.encode_decode(classic.LOSSY_BY_KEY["jpeg"], classic.as_hwc(image), 99)
    worst = classic.encode_decode(classic.LOSSY_BY_KEY["jpeg"], classic.as_hwc(image), 5)
    assert best.decoded.shape == (16, 16) and best.psnr > worst.psnr + 10
    assert len(best.data) > len(worst.data)


def test_photos_bench_parts_on_a_tiny_colour_prior(tmp_path, one_thread):
    """bench photos' lossless and lossy parts: every classic file decoded, compress checked exact, curves per crop."""
    from bench import photos as bp
    from bench.context import Context
    from diffcodec.photos import Photo

    from .conftest import make_tiny_photo_prior

    prior = make_tiny_photo_prior()
    prior.digest = "cd" * 32
    rng = np.random.default_rng(0)
    shots = [Photo(f"p{i}.png", rng.integers(0, 256, (3, 12 + i, 14), dtype=np.uint8)) for i in range(2)]
    ctx = Context(out=tmp_path, quick=True, verbose=False)
    ll = bp.lossless_part(ctx, prior, shots, steps=2)
    assert [r["photo"] for r in ll["photos"]] == ["p0.png", "p1.png"]
    for r in ll["photos"]:
        assert r["tiles"] == 1 and r["tile"] == r["shape"][1:]  # below the 64-px tile: the photo is one tile, unpadded
        assert r["png"] > 0 and r["compress"] > 0 and r["vlb_whole"] == pytest.approx(r["vlb_tiles"], rel=0.2)
    assert set(ll["mean_bits_per_dim"]) >= {"png", "vlb_whole", "vlb_tiles", "compress"}
    parts = []
    lossy = bp.lossy_part(ctx, prior, shots, steps=3, size=10, progress=parts.append)
    assert lossy["crop"] == 10 and len(lossy["curves"]["diffcodec"]) == 2
    assert [p["photos"] for p in parts] == [["p0.png"]]  # after each photo but the last, over the photos so far
    assert {k: len(v) for k, v in parts[0]["curves"].items()} == {k: 1 for k in lossy["curves"]}
    assert parts[0]["curves"]["diffcodec"] == lossy["curves"]["diffcodec"][:1]
    rates, quality = lossy["curves"]["diffcodec"][0]
    assert len(rates) == len(quality) >= 2 and rates == sorted(rates)  # every prefix a point, growing
    assert bp.centre_crop(shots[1].image, 10).shape == (3, 10, 10)


def test_photos_whole_keeps_the_photos_measured_when_cut_short(tmp_path, monkeypatch):
    """bench photos-whole writes its JSON after every photo, marked partial: an interrupted run keeps them."""
    from bench import photos as bp
    from bench import photos_whole
    from bench.__main__ import main as bench_main
    from diffcodec.photos import Photo

    rng = np.random.default_rng(2)
    shots = [Photo(f"p{i}.png", rng.integers(0, 256, (3, 10 + i, 12), dtype=np.uint8)) for i in range(4)]
    monkeypatch.setattr(photos_whole, "load_photos", lambda split: shots)  # every second: p0, p2
    save_prior(make_tiny_photo_prior(), tmp_path / "p.safetensors")
    encode_curve = bp._encode_curve
    calls = []

    def cut_at_the_second(*args):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return encode_curve(*args)

    monkeypatch.setattr(bp, "_encode_curve", cut_at_the_second)
    with pytest.raises(KeyboardInterrupt):
        bench_main(["photos-whole", "--prior", str(tmp_path / "p.safetensors"), "--steps", "3", "--quick",
                    "--out", str(tmp_path / "r"), "--quiet"])
    body = json.loads((tmp_path / "r" / "photos_whole.json").read_text())
    assert body["partial"] == "1 of 2 photos" and body["lossy"]["photos"] == ["p0.png"]
    assert body["lossy"]["crop"] == "whole" and len(body["lossy"]["curves"]["diffcodec"]) == 1


def test_every_stage_name_resolves_to_a_function():
    import importlib

    from bench.__main__ import MODULES, ON_REQUEST, STAGES

    assert set(MODULES) == set(STAGES) | set(ON_REQUEST)
    for target in MODULES.values():
        module, _, function = target.partition(":")
        assert callable(getattr(importlib.import_module(f"bench.{module}"), function or "stage"))


def test_refreshing_a_photos_part_needs_a_matching_photos_json(tmp_path):
    from bench.context import Context
    from bench.photos import refresh

    ctx = Context(out=tmp_path, prior_path=str(tmp_path / "p.safetensors"), verbose=False)
    save_prior(make_tiny_photo_prior(), tmp_path / "p.safetensors")
    with pytest.raises(ValueError, match="run `python -m bench photos`"):
        refresh(ctx, "lossless")
    (tmp_path / "photos.json").write_text(json.dumps({"prior_digest": "ab" * 32, "steps": 20}))
    with pytest.raises(ValueError, match="another prior"):
        refresh(ctx, "timing")


def test_photos_bound_accumulates_one_entry_per_prior(tmp_path, monkeypatch):
    """bench photos-bound: each prior's whole-photo bounds join the earlier entries, beside the classic codecs."""
    from bench import photos as bp
    from bench.__main__ import main as bench_main
    from diffcodec.photos import Photo

    rng = np.random.default_rng(1)
    shots = [Photo(f"p{i}.png", rng.integers(0, 256, (3, 10 + i, 12), dtype=np.uint8)) for i in range(3)]
    monkeypatch.setattr(bp, "load_photos", lambda split: shots)
    paths = []
    for seed in (0, 1):
        prior = make_tiny_photo_prior(seed=seed)
        paths.append(tmp_path / f"p{seed}.safetensors")
        save_prior(prior, paths[-1], info={"step": 10 * (seed + 1)})
    for path in paths:
        bench_main(["photos-bound", "--prior", str(path), "--steps", "3", "--out", str(tmp_path / "r"), "--quiet"])
    body = json.loads((tmp_path / "r" / "photo_bound.json").read_text())
    assert sorted(body["classic"]) == ["p0.png", "p1.png", "p2.png"] and body["mean_classic"]["png"] > 0
    entries = sorted(body["priors"].values(), key=lambda e: e["step"])
    assert [e["step"] for e in entries] == [10, 20] and entries[0]["prior_digest"] != entries[1]["prior_digest"]
    from diffcodec.checkpoint import load_prior
    from diffcodec.engines import coding_engine

    direct = bp.vlb_bits(load_prior(str(paths[0])).eval(), shots[1].image[None], 3, coding_engine("auto")) / shots[1].image.size
    assert entries[0]["bound"]["p1.png"] == pytest.approx(direct, rel=1e-9)
    assert entries[0]["mean_bound"] == pytest.approx(np.mean(list(entries[0]["bound"].values())))
    assert (entries[0]["provenance"]["data"], entries[0]["provenance"]["num_images"]) == ("photos:test", 3)  # not --data/--num's defaults
    bench_main(["photos-files", "--prior", str(paths[0]), "--steps", "3", "--out", str(tmp_path / "r"), "--quiet"])
    after = json.loads((tmp_path / "r" / "photo_bound.json").read_text())["priors"]
    first = next(e for e in after.values() if e["step"] == 10)  # the files join the bound in the prior's entry
    assert first["bound"] == entries[0]["bound"] and sorted(first["files"]) == ["p0.png", "p1.png", "p2.png"]
    blob, _ = bp.compress(load_prior(str(paths[0])).eval(), shots[2].image[None], ["p2.png"],
                          bp.CodecParams(steps=3, engine=coding_engine("auto"), threads=bp.THREADS))
    assert first["files"]["p2.png"] == 8 * len(blob) / shots[2].image.size and first["first_file_decoded_exact"]
    assert "files" not in next(e for e in after.values() if e["step"] == 20)
    assert (tmp_path / "r" / "photo_bound.png").stat().st_size > 0
