"""The photograph corpus (issue #14): prepared once from offline sources, then loaded by split.

Prepare it with ``python -m diffcodec.photos prepare``. That installs the Debian packages named in
:mod:`diffcodec.photo_sources` (apt-get, as root; otherwise it prints the ``sudo apt-get`` line) and
reads scikit-image's photographs from the installed package or from its wheel (``pip download``, no
install), then for each kept photograph:

1. decodes it to 8-bit RGB (EXIF orientation applied);
2. downsamples it with an area filter (Pillow's BOX: every output pixel is the mean of the source
   pixels it covers, in 8-bit sRGB values) so that its short side is ``short_side`` (256 by
   default), the aspect ratio kept to the nearest pixel. The Debian sources are JPEGs whose short
   side is 1,024 to 3,391 px: factors 4 to 13 average their 8x8 blocking artefacts away while 256 px
   keeps real detail. Images already at or below ``short_side`` are left at their size;
3. assigns its split from its id alone (:func:`split_of`): a photograph is in train or in test, never
   both, and adding sources never moves an existing one;
4. writes ``DIR/{train,test}/<id with / as ->.png`` and ``DIR/manifest.json`` (source, package and
   version, sha256, original and final size as [width, height], split).

DIR is ``$DIFFCODEC_PHOTOS_DIR`` or ``~/.cache/diffcodec/photos`` (``--out`` overrides it for
``prepare``). Loading: :func:`load_photos` (whole photos, different sizes), :func:`photo_tiles`
(non-overlapping square tiles, one size), :func:`photo_crops` (random square crops for training),
and the data specs ``photos:train`` / ``photos:test`` / ``photos:SPLIT:SIZE`` of
:func:`diffcodec.data.load_images` (see :func:`load_spec`).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .data import ImageSet
from .images import read_image
from .photo_sources import KEPT, REJECTED, SKIMAGE, Source

SHORT_SIDE = 256  # px, the prepared photos' short side
TEST_FRACTION = 0.2  # of photographs, by hash of their id
SPLITS = ("train", "test")
PREPARE_COMMAND = "python -m diffcodec.photos prepare"
MANIFEST = "manifest.json"
FOLDER_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".bmp"}


def photos_dir() -> Path:
    """Where the prepared corpus lives: ``$DIFFCODEC_PHOTOS_DIR`` or ``~/.cache/diffcodec/photos``."""
    env = os.environ.get("DIFFCODEC_PHOTOS_DIR")
    return Path(env) if env else Path.home() / ".cache" / "diffcodec" / "photos"


def split_of(photo_id: str, test_fraction: float = TEST_FRACTION) -> str:
    """'test' iff int(sha256(id)[:16], 16) / 2**64 < test_fraction, else 'train'.

    The split depends on the photograph's id only, never on a patch or on the other sources.
    """
    u = int(hashlib.sha256(photo_id.encode()).hexdigest()[:16], 16) / 2**64
    return "test" if u < test_fraction else "train"


def target_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """(width, height) with the short side ``short_side`` and the aspect kept; never larger than given."""
    short = min(width, height)
    if short <= short_side:
        return width, height
    scale = short_side / short
    return (short_side, max(1, round(height * scale))) if width == short else (max(1, round(width * scale)), short_side)


def downsample(im: Image.Image, short_side: int) -> Image.Image:
    """Area-filter (BOX) an RGB image down to ``target_size``."""
    size = target_size(*im.size, short_side)
    return im if size == im.size else im.resize(size, Image.BOX)


def decode_rgb(data: bytes, source: str) -> Image.Image:
    """Encoded image bytes → an 8-bit RGB Pillow image; grayscale and transparent images are refused."""
    try:
        im = Image.open(io.BytesIO(data))
        im.load()
    except (UnidentifiedImageError, OSError) as err:
        raise ValueError(f"{source}: not an image Pillow can read ({err})") from None
    im = ImageOps.exif_transpose(im)
    if im.mode in ("L", "LA", "1", "I", "I;16", "F"):
        raise ValueError(f"{source}: grayscale image ({im.mode}); the photo corpus is colour")
    if im.mode in ("RGBA", "PA", "P"):
        im = im.convert("RGBA")
        if np.asarray(im)[..., 3].min() < 255:
            raise ValueError(f"{source}: has transparency; the photo corpus takes opaque images")
    arr = np.asarray(im.convert("RGB"))
    if (arr[..., 0] == arr[..., 1]).all() and (arr[..., 1] == arr[..., 2]).all():
        raise ValueError(f"{source}: grayscale image (R = G = B); the photo corpus is colour")
    return Image.fromarray(arr, "RGB")


def folder_sources(folder: Path) -> tuple[Source, ...]:
    """Every image file in ``folder`` (sorted, not recursive) as a source with id ``<folder name>/<stem>``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{folder}: no such folder")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in FOLDER_SUFFIXES)
    if not files:
        raise ValueError(f"{folder}: no image files ({', '.join(sorted(FOLDER_SUFFIXES))})")
    return tuple(Source(f"{folder.name}/{p.stem}", "", str(p)) for p in files)


# -- locating the sources ------------------------------------------------------------------------


def _dpkg_version(package: str) -> str | None:
    try:
        out = subprocess.run(["dpkg-query", "-W", "-f=${Status}\t${Version}", package], capture_output=True, text=True)
    except FileNotFoundError:
        return None
    status, _, version = out.stdout.partition("\t")
    return version if out.returncode == 0 and status.endswith(" installed") else None


def ensure_debian_packages(packages: list[str], install: bool) -> dict[str, str]:
    """{package: version}, installing the missing ones with apt-get when ``install`` and root."""
    missing = [p for p in packages if _dpkg_version(p) is None]
    if missing:
        command = "apt-get install -y --no-install-recommends " + " ".join(missing)
        if not install or shutil.which("apt-get") is None or os.geteuid() != 0:
            raise ValueError(f"missing Debian packages {', '.join(missing)}; install them with: sudo {command}")
        if subprocess.run(command.split() + ["-qq"]).returncode != 0:
            subprocess.run(["apt-get", "update", "-qq"], check=False)
            if subprocess.run(command.split() + ["-qq"]).returncode != 0:
                raise ValueError(f"'{command}' failed (see apt-get's output above)")
    return {p: _dpkg_version(p) or "?" for p in packages}


class SkimageData:
    """scikit-image's bundled data files: from the installed package, else from its wheel.

    The wheel is fetched with ``pip download --no-deps`` into ``wheel_dir`` (nothing is installed).
    """

    def __init__(self, wheel_dir: Path, install: bool):
        try:
            import skimage  # noqa: PLC0415

            self.folder, self.zip, self.version = Path(skimage.__file__).parent, None, skimage.__version__
            return
        except ImportError:
            pass
        wheels = sorted(Path(wheel_dir).glob("scikit_image-*.whl"))
        if not wheels and install:
            cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "-d", str(wheel_dir), "scikit-image"]
            subprocess.run(cmd, check=False)
            wheels = sorted(Path(wheel_dir).glob("scikit_image-*.whl"))
        if not wheels:
            raise ValueError(f"scikit-image not found; pip install scikit-image, or put its wheel in {wheel_dir}")
        self.folder, self.zip, self.version = None, zipfile.ZipFile(wheels[-1]), wheels[-1].name.split("-")[1]

    def read(self, path: str) -> bytes:
        """``path`` as inside the wheel, e.g. ``skimage/data/astronaut.png``."""
        if self.zip is not None:
            return self.zip.read(path)
        return (self.folder.parent / path).read_bytes()


# -- preparing ------------------------------------------------------------------------------------


@dataclass
class PrepareResult:
    root: Path
    manifest: dict
    warnings: list[str]

    def summary(self) -> str:
        m, lines = self.manifest, []
        for split in SPLITS:
            photos = [p for p in m["photos"] if p["split"] == split]
            px = sum(w * h for w, h in (p["size"] for p in photos))
            lines.append(f"{split}: {len(photos)} photos, {px:,} pixels ({px * 3:,} dims)")
        sizes = sorted({f"{w}x{h}" for w, h in (p["size"] for p in m["photos"])})
        lines.append(f"sizes (WxH, short side {m['short_side']}): {', '.join(sizes)}")
        return "\n".join([f"wrote {len(m['photos'])} photos to {self.root}", *lines, *(f"warning: {w}" for w in self.warnings)])


def prepare(
    root: Path | None = None,
    sources: tuple[Source, ...] = KEPT,
    short_side: int = SHORT_SIDE,
    install: bool = True,
    test_fraction: float = TEST_FRACTION,
) -> PrepareResult:
    """Write the corpus (module docstring) to ``root`` (default :func:`photos_dir`), replacing the PNGs
    already in its train/ and test/; returns the manifest."""
    if short_side < 8:
        raise ValueError(f"short side must be >= 8 px, got {short_side}")
    ids = [s.id for s in sources]
    if len(set(ids)) != len(ids):
        raise ValueError(f"photo ids must be unique; repeated: {sorted({i for i in ids if ids.count(i) > 1})}")
    root = Path(root) if root is not None else photos_dir()
    versions = ensure_debian_packages(sorted({s.package for s in sources} - {"", SKIMAGE}), install)
    skimage = SkimageData(root / "wheels", install) if any(s.package == SKIMAGE for s in sources) else None
    if skimage is not None:
        versions[SKIMAGE] = skimage.version
    for split in SPLITS:
        (root / split).mkdir(parents=True, exist_ok=True)
        for old in (root / split).glob("*.png"):
            old.unlink()
    (root / MANIFEST).unlink(missing_ok=True)
    entries, warnings = [], []
    for src in sources:
        data = _read_source(src, skimage)
        sha = hashlib.sha256(data).hexdigest()
        if src.sha256 and not sha.startswith(src.sha256):
            warnings.append(f"{src.path} ({src.package}) is not the file reviewed in photo_sources.py; check it is a photograph")
        im = decode_rgb(data, src.path)
        small = downsample(im, short_side)
        split = split_of(src.id, test_fraction)
        file = f"{split}/{src.id.replace('/', '-')}.png"
        small.save(root / file, format="PNG")
        entries.append({"id": src.id, "file": file, "split": split, "package": src.package or None,
                        "version": versions.get(src.package), "source": src.path, "sha256": sha,
                        "original_size": list(im.size), "size": list(small.size)})  # fmt: skip
    manifest = {
        "format": "diffcodec-photos", "version": 1, "short_side": short_side,
        "filter": "Pillow BOX (area average of 8-bit sRGB values)", "test_fraction": test_fraction,
        "split_rule": f"test iff int(sha256(id)[:16], 16) / 2**64 < {test_fraction}",
        "counts": {s: sum(e["split"] == s for e in entries) for s in SPLITS}, "photos": entries,
    }  # fmt: skip
    tmp = root / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1) + "\n")
    tmp.replace(root / MANIFEST)  # written last: a corpus without its manifest is an unfinished one
    return PrepareResult(root, manifest, warnings)


def _read_source(src: Source, skimage: SkimageData | None) -> bytes:
    if src.package == SKIMAGE:
        try:
            return skimage.read(src.path)
        except (KeyError, OSError):
            raise ValueError(f"{src.path}: not in scikit-image {skimage.version}") from None
    path = Path(src.path)
    if not path.is_file():
        raise ValueError(f"{path}: missing" + (f" (package {src.package} installed but without it)" if src.package else ""))
    return path.read_bytes()


# -- loading --------------------------------------------------------------------------------------


@dataclass
class Photo:
    name: str  # the prepared file's name, e.g. "mate-Aqua.png"
    image: np.ndarray  # [3, H, W] uint8


def load_manifest(root: Path | None = None) -> dict:
    """The prepared corpus's manifest; one-line ValueError with the prepare command when missing."""
    root = Path(root) if root is not None else photos_dir()
    path = root / MANIFEST
    if not path.is_file():
        raise ValueError(f"no prepared photo corpus in {root} (no {MANIFEST}); prepare it with: {PREPARE_COMMAND}")
    return json.loads(path.read_text())


def load_photos(split: str, root: Path | None = None) -> list[Photo]:
    """The whole prepared photos of ``split`` ('train' or 'test'), in manifest order; sizes differ."""
    if split not in SPLITS:
        raise ValueError(f"unknown photo split {split!r} (expected train or test)")
    root = Path(root) if root is not None else photos_dir()
    entries = [e for e in load_manifest(root)["photos"] if e["split"] == split]
    for e in entries:
        if not (root / e["file"]).is_file():
            raise ValueError(f"{root / e['file']}: missing from the prepared photo corpus; prepare it again with: {PREPARE_COMMAND}")
    return [Photo(Path(e["file"]).name, read_image(root / e["file"], channels=3)) for e in entries]


def photo_tiles(split: str, size: int, root: Path | None = None) -> ImageSet:
    """Non-overlapping ``size``×``size`` tiles of every photo of ``split`` → ImageSet [N, 3, size, size].

    Row-major from each photo's top-left corner; the right and bottom remainders are dropped.
    """
    if size < 1:
        raise ValueError(f"tile size must be >= 1, got {size}")
    tiles, names = [], []
    for p in load_photos(split, root):
        _, h, w = p.image.shape
        for y in range(0, h - size + 1, size):
            for x in range(0, w - size + 1, size):
                tiles.append(p.image[:, y : y + size, x : x + size])
                names.append(f"{Path(p.name).stem}-y{y}-x{x}.png")
    if not tiles:
        raise ValueError(f"photos:{split}: no photo is {size}x{size} or larger")
    return ImageSet(np.stack(tiles), names)


def random_crops(photos: list[Photo], size: int, n: int, rng: np.random.Generator) -> ImageSet:
    """``n`` random ``size``×``size`` crops [n, 3, size, size]; every (photo, position) equally likely.

    A photo of H×W holds (H - size + 1)(W - size + 1) positions; photos smaller than ``size`` are
    skipped. No flips or other augmentation: that is the trainer's choice.
    """
    fits = [p for p in photos if min(p.image.shape[1:]) >= size]
    if not fits or n < 1:
        raise ValueError(f"no {size}x{size} crop possible (n={n}, {len(fits)} of {len(photos)} photos large enough)")
    positions = np.array([(p.image.shape[1] - size + 1) * (p.image.shape[2] - size + 1) for p in fits], dtype=np.float64)
    which = rng.choice(len(fits), size=n, p=positions / positions.sum())
    out, names = np.empty((n, 3, size, size), dtype=np.uint8), []
    for i, k in enumerate(which):
        _, h, w = fits[k].image.shape
        y, x = int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))
        out[i] = fits[k].image[:, y : y + size, x : x + size]
        names.append(f"{Path(fits[k].name).stem}-y{y}-x{x}.png")
    return ImageSet(out, names)


def photo_crops(split: str, size: int, n: int, seed: int, root: Path | None = None) -> ImageSet:
    """``n`` random crops of ``split``'s photos (:func:`random_crops`), the same for the same seed."""
    return random_crops(load_photos(split, root), size, n, np.random.default_rng(seed))


def load_spec(spec: str) -> ImageSet:
    """``photos:SPLIT`` → the whole photos (only when they share one size: ImageSet holds one size);
    ``photos:SPLIT:SIZE`` → their SIZE×SIZE tiles (:func:`photo_tiles`)."""
    parts = spec.split(":")
    if len(parts) not in (2, 3) or parts[0] != "photos" or parts[1] not in SPLITS or (len(parts) == 3 and not parts[2].isdigit()):
        raise ValueError(f"{spec}: expected photos:train, photos:test or photos:SPLIT:SIZE (SIZExSIZE tiles, e.g. photos:test:64)")
    split = parts[1]
    try:
        if len(parts) == 3:
            return photo_tiles(split, int(parts[2]))
        photos = load_photos(split)
    except ValueError as err:
        raise ValueError(f"{spec}: {err}") from None
    shapes = {p.image.shape for p in photos}
    if len(shapes) != 1:
        raise ValueError(
            f"{spec}: its {len(photos)} photos come in {len(shapes)} sizes and this needs one; "
            f"use {spec}:SIZE for SIZExSIZE tiles (e.g. {spec}:64), or diffcodec.photos.load_photos for whole photos"
        )
    return ImageSet(np.stack([p.image for p in photos]), [p.name for p in photos])


# -- command line ---------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m diffcodec.photos", description="The photograph corpus (issue #14).")
    sub = parser.add_subparsers(dest="command", required=True)
    prep = sub.add_parser("prepare", help="install the sources and write the downsampled corpus")
    prep.add_argument("--out", type=Path, default=None, help="corpus folder (default $DIFFCODEC_PHOTOS_DIR or ~/.cache/diffcodec/photos)")
    prep.add_argument("--short-side", type=int, default=SHORT_SIDE, help=f"short side in px after downsampling (default {SHORT_SIDE})")
    prep.add_argument("--from-folder", type=Path, default=None, help="use the images of this folder instead of the reviewed sources")
    prep.add_argument("--no-install", action="store_true", help="do not run apt-get / pip download; fail if a source is missing")
    prep.add_argument("--json", action="store_true", help="print the manifest as JSON")
    sub.add_parser("sources", help="list the reviewed sources, kept and rejected")
    args = parser.parse_args(argv)
    try:
        if args.command == "sources":
            for s in KEPT:
                print(f"kept\t{s.package}\t{s.path}")
            for package, what, why in REJECTED:
                print(f"rejected\t{package}\t{what}\t{why}")
            return 0
        sources = folder_sources(args.from_folder) if args.from_folder is not None else KEPT
        result = prepare(args.out, sources, args.short_side, install=not args.no_install)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(json.dumps(result.manifest, indent=1) if args.json else result.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
