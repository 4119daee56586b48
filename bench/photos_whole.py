"""Lossy coding of whole test photographs (issue #14): ``python -m bench photos-whole [--num N]``.

``python -m bench photos`` measures rate–distortion on 64-px centre crops because ``encode``'s
search grows with the pixel count. This stage runs the same comparison (bench.photos.lossy_part:
JPEG, WebP, JPEG XL and AVIF sweeps, one file per photo, decoded; ``encode`` stopped at 41 dB,
every prefix a point) on whole photos: the ``--num`` smallest of the photos the crop comparison
uses (every second test photo; default all 5). A 256×256 photo takes ``encode`` 10-12 minutes on
this CPU (about 80 % of it the candidate search), a 256×410 one 13-21.

Writes ``photos_whole.json`` (the lossy part's schema, ``crop`` = "whole") after every photo's
``encode``, marked ``partial`` until the last is in.
"""

from __future__ import annotations

import torch

from diffcodec.photos import load_photos

from .photos import LOSSY_EVERY, THREADS, WHOLE, lossy_part, photo_prior


def stage(ctx) -> dict:
    prior, steps = photo_prior(ctx, "photos-whole")
    photos = sorted(load_photos("test")[::LOSSY_EVERY], key=lambda p: p.image.size)[: ctx.num]
    torch.set_num_threads(THREADS)
    ctx.measured_on = ("photos:test", len(photos))
    ctx.log(f"photos-whole: {[p.name for p in photos]}, prior {prior.digest[:12]}, {steps} steps")

    def write(lossy: dict) -> dict:
        body = {"prior_digest": prior.digest, "prior_info": prior.info, "data": "photos:test", "steps": steps, "lossy": lossy}
        if len(lossy["photos"]) < len(photos):  # written after each photo: a run cut short keeps what it measured
            body["partial"] = f"{len(lossy['photos'])} of {len(photos)} photos"
        return ctx.write("photos_whole", body)

    return write(lossy_part(ctx, prior, photos, steps, WHOLE, progress=write))
