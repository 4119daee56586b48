"""Where a benchmark figure came from: commit, prior, images, codec versions, machine.

Every result JSON written by ``python -m bench`` carries :func:`provenance` under the key
``provenance`` (written through :func:`write_json`, which also refuses NaN/inf: JSON has no such
numbers, so they become ``null``).
"""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"


def git_commit() -> dict:
    """HEAD of the repository and whether the library or bench code differs from it."""

    def git(*args) -> subprocess.CompletedProcess:
        return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=False)

    head = git("rev-parse", "HEAD")
    if head.returncode != 0:
        return {"commit": None, "dirty": None}
    dirty = git("status", "--porcelain", "--untracked-files=no", "--", "diffcodec", "cli", "bench/*.py").stdout.strip()
    return {"commit": head.stdout.strip(), "dirty": bool(dirty)}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict:
    import torch

    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
    }


def codec_versions() -> dict:
    """Pillow and its libraries, imagecodecs and the libraries it reports (None where absent)."""
    import PIL
    from PIL import features

    out = {"Pillow": PIL.__version__}
    for lib in ("libjpeg_turbo", "webp", "avif", "zlib"):
        try:
            out[f"Pillow.{lib}"] = features.version(lib)
        except Exception:  # an unknown feature name in another Pillow version
            out[f"Pillow.{lib}"] = None
    try:
        from PIL import AvifImagePlugin

        out["Pillow.avif.aom"] = AvifImagePlugin.get_codec_version("aom")
    except (ImportError, AttributeError):
        out["Pillow.avif.aom"] = None
    try:
        import imagecodecs
    except ImportError:
        out["imagecodecs"] = None
        return out
    out["imagecodecs"] = imagecodecs.__version__
    libs = imagecodecs.version(dict)
    for lib in ("libjxl", "libwebp", "libavif", "charls", "libpng"):
        out[f"imagecodecs.{lib}"] = libs.get(lib)
    return out


def provenance(prior=None, num_images: int | None = None, data: str | None = None) -> dict:
    """The record every result file carries. ``prior`` is a :class:`diffcodec.prior.Prior` or None."""
    return {
        **git_commit(),
        "prior_digest": getattr(prior, "digest", None),
        "data": data,
        "num_images": num_images,
        "codecs": codec_versions(),
        "machine": machine(),
    }


def _clean(x):
    """JSON-safe copy: numpy scalars/arrays to Python, NaN and ±inf to None."""
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, np.ndarray):
        return _clean(x.tolist())
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        x = float(x)
        return x if math.isfinite(x) else None
    return x


def write_json(path: Path, payload: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_clean(payload), indent=1, allow_nan=False) + "\n")
    return path


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
