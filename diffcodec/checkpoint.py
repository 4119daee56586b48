"""Prior files: one self-describing safetensors file, no pickle (diffusers folders: ``diffusers_prior``).

Layout: the network's float32 weights as safetensors tensors; the safetensors header metadata holds
``format`` = "diffcodec-prior", ``version``, ``config`` (PriorConfig as canonical JSON), ``digest``
and optional free-form ``info`` (JSON: how the prior was trained). The digest is SHA-256 over the
canonical config JSON and every tensor (name, dtype, shape, raw little-endian bytes) in name order;
it identifies the prior in every compressed file and is verified on load, so a corrupted or
truncated prior file fails loudly. Loading executes no code from the file.
"""

from __future__ import annotations

import hashlib
import json
import os
from importlib import resources
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from .files import atomic_write
from .prior import Prior, PriorConfig

FORMAT = "diffcodec-prior"
VERSION = "1"
DEFAULT_PRIOR_NAME = "default.safetensors"


def prior_digest(config: PriorConfig, state: dict[str, torch.Tensor]) -> str:
    """SHA-256 hex digest of a prior's configuration and weights (independent of file layout)."""
    h = hashlib.sha256()
    h.update(config.to_json().encode())
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"\0{name}\0{t.dtype}\0{list(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _state(prior: Prior) -> dict[str, torch.Tensor]:
    return {k: row_major(v.detach().cpu().float()) for k, v in prior.net.state_dict().items()}


def row_major(t: torch.Tensor) -> torch.Tensor:
    """``t`` with row-major strides (channels-last weights, even 1×1 ones that count as contiguous, are copied)."""
    return t.clone(memory_format=torch.contiguous_format)


def save_prior(prior: Prior, path: str | os.PathLike, info: dict | None = None) -> str:
    """Write ``prior`` atomically (write, then rename) and return its digest."""
    state = _state(prior)
    digest = prior_digest(prior.config, state)
    meta = {"format": FORMAT, "version": VERSION, "config": prior.config.to_json(), "digest": digest}
    if info:
        meta["info"] = json.dumps(info, sort_keys=True)
    atomic_write(Path(path), st_save(state, metadata=meta))
    prior.digest = digest
    return digest


def safetensors_metadata(data: bytes, what: str) -> dict:
    """The ``__metadata__`` dict of a safetensors file's bytes; ValueError naming ``what`` otherwise."""
    if len(data) < 8:
        raise ValueError(f"not a {what} file (too short)")
    n = int.from_bytes(data[:8], "little")
    if n <= 0 or 8 + n > len(data):
        raise ValueError(f"not a {what} file (bad or truncated safetensors header)")
    try:
        header = json.loads(data[8 : 8 + n])
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ValueError(f"not a {what} file (unreadable header)") from None
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    return meta if isinstance(meta, dict) else {}


def read_prior_header(data: bytes) -> dict:
    """The metadata dict of a prior file's bytes; ValueError if it is not a diffcodec prior."""
    meta = safetensors_metadata(data, "diffcodec prior")
    if meta.get("format") != FORMAT:
        raise ValueError("not a diffcodec prior file (no diffcodec-prior metadata)")
    if meta.get("version") != VERSION:
        raise ValueError(f"unsupported prior file version {meta.get('version')!r} (this diffcodec reads {VERSION})")
    return meta


def _diffusers_folder_of(path: Path) -> Path | None:
    """The diffusers checkpoint folder that holds the file ``path`` (flat or in unet/), if any."""
    from .diffusers_prior import find_layout

    for folder in (path.parent, path.parent.parent):
        try:
            if path.resolve().parent == find_layout(folder).model_dir.resolve():
                return folder
        except (ValueError, OSError):
            pass
    return None


# The embedded priors, by the name --prior takes: Fashion-MNIST (grayscale 28×28, the default) and
# natural colour photographs (an any-size network: it codes whole images).
EMBEDDED_PRIORS = {"fashion": DEFAULT_PRIOR_NAME, "photo": "photo.safetensors"}


def default_prior_path() -> Path:
    return embedded_prior_path("fashion")


def embedded_prior_path(name: str) -> Path:
    return Path(str(resources.files("diffcodec") / "priors" / EMBEDDED_PRIORS[name]))


def prior_location(path: str | os.PathLike | None) -> Path:
    """--prior's value as a path: None → the default prior; an embedded name (``fashion``, ``photo``)
    → that prior, unless a file or folder of that name exists here."""
    if path is None:
        return default_prior_path()
    if str(path) in EMBEDDED_PRIORS and not Path(path).exists():
        found = embedded_prior_path(str(path))
        if not found.is_file():
            raise ValueError(f"the embedded prior {path!r} is not installed ({found} is missing)")
        return found
    return Path(path)


def embedded_prior_for_channels(channels: int) -> str:
    """The embedded prior for input of ``channels`` channels: 1 (grayscale) → fashion, 3 (colour) → photo."""
    if channels == 3:
        if not embedded_prior_path("photo").is_file():
            raise ValueError("colour input, but the embedded photo prior is not installed; pass a colour prior with --prior")
        return "photo"
    return "fashion"


def embedded_prior_for_file(matches) -> str | None:
    """The embedded prior whose recorded digest ``matches(digest) -> bool`` accepts (a file header's
    ``matches_prior``), or None. Reads each prior's header only; load_prior verifies the weights."""
    for name in EMBEDDED_PRIORS:
        path = embedded_prior_path(name)
        if path.is_file():
            try:
                digest = read_prior_header(path.read_bytes()).get("digest")
            except ValueError:
                continue
            if digest and matches(digest):
                return name
    return None


def load_prior(path: str | os.PathLike | None = None, device: str | torch.device = "cpu") -> Prior:
    """Load a prior file (the embedded default when ``path`` is None; an embedded prior by name,
    :func:`prior_location`), verify its digest, eval mode.

    A folder is read as a Hugging Face diffusers DDPM checkpoint (``diffusers_prior``, needs the
    ``diffusers`` extra).
    """
    path = prior_location(path)
    if path.is_dir():
        from .diffusers_prior import load_diffusers_prior

        return load_diffusers_prior(path, device)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ValueError(f"prior file not found: {path}") from None
    try:
        meta = read_prior_header(data)
    except ValueError as err:
        folder = _diffusers_folder_of(path)
        if folder is not None:
            raise ValueError(f"{path} is a file of a diffusers checkpoint; pass its folder: --prior {folder}") from None
        raise err
    try:
        state = st_load(data)
    except (SafetensorError, Exception) as err:  # safetensors raises its own error types on bad bytes
        raise ValueError(f"prior file {path} is corrupted or truncated ({err})") from None
    try:
        config = PriorConfig.from_dict(json.loads(meta["config"]))
    except (KeyError, json.JSONDecodeError) as err:
        raise ValueError(f"prior file {path} has an unreadable configuration ({err})") from None
    digest = prior_digest(config, state)
    if digest != meta.get("digest"):
        raise ValueError(f"prior file {path} is corrupted: its content does not match its recorded digest")
    prior = Prior(config)
    try:
        prior.net.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ValueError(f"prior file {path} does not match its configuration: {str(err).splitlines()[0]}") from None
    prior.digest = digest
    prior.info = json.loads(meta["info"]) if "info" in meta else {}
    return prior.to(device).eval()
