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
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _state(prior: Prior) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().float().contiguous() for k, v in prior.net.state_dict().items()}


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


def default_prior_path() -> Path:
    return Path(str(resources.files("diffcodec") / "priors" / DEFAULT_PRIOR_NAME))


def load_prior(path: str | os.PathLike | None = None, device: str | torch.device = "cpu") -> Prior:
    """Load a prior file (the embedded default when ``path`` is None), verify its digest, eval mode.

    A folder is read as a Hugging Face diffusers DDPM checkpoint (``diffusers_prior``, needs the
    ``diffusers`` extra).
    """
    path = default_prior_path() if path is None else Path(path)
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
