"""What every stage of ``python -m bench`` shares: options, the prior, the images, result files.

A stage is a function ``stage(ctx: Context) -> dict`` that writes ``<name>.json`` (+ PNG) into
``ctx.out`` through :meth:`Context.write` (which adds the provenance record) and returns the payload.
Expensive network results are looked up first with :meth:`Context.cached`: a JSON of the same name in
``ctx.out`` or in the committed ``bench/results/`` whose recorded fields match (prior digest, data,
image count, steps, …) is reused unless ``--recompute`` is given.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from .provenance import RESULTS, provenance, read_json, write_json


@dataclass
class Context:
    out: Path = RESULTS
    data: str = "fashion-mnist:test"
    num: int = 1000  # the first ``num`` images of ``data``
    quick: bool = False
    recompute: bool = False
    steps: int = 100  # the codecs' chain (CODEC_STEPS), capped at the prior's T
    spacing: str = "front"
    prior_path: str | None = None  # None: the embedded default prior
    strip_index: int = 0
    verbose: bool = True
    measured_on: tuple[str, int] | None = None  # (data, count) a stage ran on instead of --data/--num (the photo stages)
    started: float = field(default_factory=time.time)

    def log(self, msg: str) -> None:
        if self.verbose:
            print(f"[bench {time.time() - self.started:6.0f} s] {msg}", file=sys.stderr, flush=True)

    @cached_property
    def prior(self):
        from diffcodec.checkpoint import load_prior

        return load_prior(self.prior_path).eval()

    @cached_property
    def images(self) -> np.ndarray:
        """[N, C, H, W] uint8: the first ``num`` images of ``data``."""
        from diffcodec.data import load_images

        images = load_images(self.data).images
        if self.num > len(images):
            raise ValueError(f"--num {self.num}: {self.data} holds only {len(images)} images")
        return np.ascontiguousarray(images[: self.num])

    @property
    def chain_steps(self) -> int:
        return min(self.steps, self.prior.config.num_timesteps)

    def provenance(self, with_prior: bool = True) -> dict:
        data, num = self.measured_on or (self.data, self.num)
        return provenance(self.prior if with_prior else None, num, data)

    def write(self, name: str, payload: dict, with_prior: bool = True) -> dict:
        """``out/name.json`` = payload + ``provenance``; returns what was written."""
        body = {"stage": name, **payload, "provenance": self.provenance(with_prior)}
        write_json(self.out / f"{name}.json", body)
        self.log(f"wrote {self.out / name}.json")
        return body

    def png(self, name: str) -> Path:
        self.out.mkdir(parents=True, exist_ok=True)
        return self.out / f"{name}.png"

    def cached(self, name: str, **match) -> dict | None:
        """A previous ``name.json`` (in ``out``, then in bench/results/) whose fields equal ``match``.

        A key ``prior_digest``, ``data`` or ``num_images`` is looked up in the file's provenance record
        when it is not at the top level.
        """
        if self.recompute:
            return None
        for folder in dict.fromkeys([self.out, RESULTS]):
            found = read_json(folder / f"{name}.json")
            if found is None:
                continue
            prov = found.get("provenance", {})
            if all(found.get(k, prov.get(k)) == v for k, v in match.items()):
                self.log(f"reusing {folder / name}.json")
                return found
        return None
