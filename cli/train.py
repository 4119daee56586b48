"""`diffcodec train`."""

from __future__ import annotations

import json
import os
from pathlib import Path

import click

from .common import device_option, engine_option, one_line_errors


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ValueError(f"expected comma-separated integers, got {text!r}") from None


def _configs(config_file, o) -> tuple[dict, dict, dict]:
    """(unet, prior, train) keyword dicts from the flags, overridden by a JSON config file
    {"prior": {..., "unet": {...}}, "train": {...}} when given."""
    unet = dict(
        image_channels=None, image_size=None, base_channels=o["channels"], channel_mult=_ints(o["mult"]),
        num_res_blocks=o["res_blocks"], attention_resolutions=_ints(o["attention"]), dropout=o["dropout"],
        learn_variance=o["variance"] == "learned", norm=o["norm"], mid_attention=o["mid_attention"],
    )
    prior = dict(schedule=o["schedule"], num_timesteps=o["timesteps"], variance=o["variance"], clip_x0=True)
    train = dict(objective=o["objective"], batch_size=o["batch"], lr=o["lr"], warmup_steps=o["warmup"],
                 grad_clip=o["grad_clip"], ema_decay=o["ema"], flip=o["flip"], seed=o["seed"], precision=o["precision"])
    if config_file:
        try:
            doc = json.loads(Path(config_file).read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"{config_file}: unreadable JSON config ({err})") from None
        unet.update(doc.get("prior", {}).pop("unet", {}))
        prior.update(doc.get("prior", {}))
        train.update(doc.get("train", {}))
    return unet, prior, train


@click.command()
@click.option("--data", "data_spec", required=True, help="Training images: folder of PNGs, .npy/.npz, fashion-mnist:train or photos:train.")
@click.option("--crop", type=click.IntRange(min=1), default=None, help="Train on random CROP x CROP crops of the images (which may then differ in size; "
              "--holdout counts whole images, evaluated on fixed crops). Default: whole images, all of one square size.")
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False), help="Prior file to write (EMA weights), updated at every checkpoint.")
@click.option("--checkpoint", type=click.Path(dir_okay=False), default=None, help="Training state file (default: OUT with .state appended).")
@click.option("--resume", is_flag=True, help="Continue exactly from --checkpoint (configs come from it; --steps may extend the run).")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None, help='JSON {"prior": {..., "unet": {...}}, "train": {...}} overriding the flags.')
@click.option("--steps", type=click.IntRange(min=1), default=10000, show_default=True, help="Total optimisation steps.")
@click.option("--time-limit", type=float, default=None, help="Stop (and checkpoint) after this many seconds of this run.")
@click.option("--holdout", type=click.IntRange(min=0), default=1000, show_default=True, help="Last N images held out of training for the held-out bits/dim.")
@click.option("--eval-images", type=click.IntRange(min=1), default=64, show_default=True, help="Held-out images used per evaluation.")
@click.option("--eval-every", type=click.IntRange(min=0), default=1000, show_default=True, help="Steps between held-out evaluations (0: never).")
@click.option("--ckpt-every", type=click.IntRange(min=1), default=500, show_default=True, help="Steps between checkpoints.")
@click.option("--eval-log", "log_path", type=click.Path(dir_okay=False), default=None, help="Append one JSON line per evaluation here (named so that torchrun does not take it for its --log-dir).")
@click.option("--channels", type=int, default=32, show_default=True, help="U-Net base width.")
@click.option("--mult", default="1,2,2", show_default=True, help="Channel multiplier per resolution level.")
@click.option("--res-blocks", type=int, default=2, show_default=True)
@click.option("--attention", default="7", show_default=True, help="Resolutions with self-attention (comma-separated, '' for none).")
@click.option("--dropout", type=float, default=0.1, show_default=True)
@click.option("--norm", type=click.Choice(["group", "channel"]), default="group", show_default=True,
              help="group: GroupNorm over channels and pixels; channel: per pixel over channels. With channel, "
                   "--no-mid-attention and --attention '' the network is fully convolutional: it codes any image size whole.")
@click.option("--mid-attention/--no-mid-attention", default=True, show_default=True, help="Self-attention in the middle block.")
@click.option("--schedule", type=click.Choice(["linear", "cosine"]), default="cosine", show_default=True)
@click.option("--timesteps", type=int, default=1000, show_default=True)
@click.option("--variance", type=click.Choice(["small", "large", "learned"]), default="learned", show_default=True)
@click.option("--objective", type=click.Choice(["simple", "vlb", "hybrid"]), default="hybrid", show_default=True)
@click.option("--batch", type=int, default=64, show_default=True, help="Global batch size (split across torchrun processes).")
@click.option("--lr", type=float, default=2e-4, show_default=True)
@click.option("--warmup", type=int, default=500, show_default=True)
@click.option("--grad-clip", type=float, default=1.0, show_default=True)
@click.option("--ema", type=float, default=0.999, show_default=True)
@click.option("--flip/--no-flip", default=False, show_default=True, help="Random horizontal flips.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--precision", type=click.Choice(["float32", "bf16"]), default="float32", show_default=True,
              help="bf16: the network's forward and backward passes under bf16 autocast (README, Engines).")
@click.option("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice; 1 per process under torchrun).")
@engine_option("the held-out evaluation runs the network", "(onnxruntime on a CPU without bf16 units, float32 without "
               "onnxruntime; README, Engines). Training itself runs as --precision says.")
@device_option
@one_line_errors
def train(data_spec, crop, out, checkpoint, resume, config_file, steps, time_limit, holdout, eval_images, eval_every, ckpt_every,
          log_path, threads, engine, device, **flags):
    """Train a DDPM prior; runs data-parallel under `torchrun --nproc_per_node N`.

    Periodic atomic checkpoints let a run killed at any moment resume exactly with --resume.
    """
    import torch
    import torch.distributed as dist

    from diffcodec.files import check_output_file
    from diffcodec.runtime import resolve_device

    for path in (out, checkpoint, log_path):
        if path:
            check_output_file(path, make_parents=True)  # the prior writer creates missing folders
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    dev = resolve_device(device)
    if distributed:
        if dev.type == "cuda":
            dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(dev)
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
        threads = threads or 1
    if threads:
        torch.set_num_threads(threads)
    try:
        _train(data_spec, out, checkpoint, resume, config_file, steps, time_limit, holdout, eval_images, eval_every,
               ckpt_every, log_path, dev, flags, engine, crop)
        if distributed:  # every rank done (rank 0 writes the files) before any tears the group down:
            dist.barrier()  # a gloo peer closed mid-exchange can abort the other ("terminate called ...")
    finally:
        if distributed:
            dist.destroy_process_group()


def _train(data_spec, out, checkpoint, resume, config_file, steps, time_limit, holdout, eval_images, eval_every,
           ckpt_every, log_path, dev, flags, engine="float32", crop=None):
    from diffcodec.prior import PriorConfig
    from diffcodec.train import TrainConfig, Trainer, fit, read_train_state

    train_images, heldout, shape = _training_data(data_spec, holdout, eval_images, crop)
    checkpoint = checkpoint or f"{out}.state"
    if resume:
        tensors, meta, prior_cfg, train_cfg = read_train_state(checkpoint)
    else:
        unet, prior, tcfg = _configs(config_file, flags)
        c, h, w = shape
        if h != w:
            raise ValueError(f"training images must be square, got {w}x{h}")
        unet["image_channels"], unet["image_size"] = c, h
        prior_cfg = PriorConfig.from_dict(dict(prior, unet=unet))
        train_cfg = TrainConfig(**tcfg)
    from diffcodec.engines import resolve_engine

    trainer = Trainer(prior_cfg, train_cfg, train_images, dev, heldout=heldout, eval_engine=resolve_engine(engine, dev))
    if resume:
        trainer.load_state(tensors, meta)
        click.echo(f"resumed at step {trainer.step} ({trainer.images_seen} images seen)", err=True)
    elif trainer.rank == 0:
        n = sum(p.numel() for p in trainer.prior.net.parameters())
        click.echo(f"training a {n:,}-parameter prior on {len(train_images)} images ({data_spec})", err=True)
    info = {"data": data_spec, "holdout": holdout, **({"crop": crop} if crop else {})}
    fit(trainer, steps, checkpoint, out, ckpt_every=ckpt_every, eval_every=eval_every, time_limit=time_limit, info=info,
        log_path=log_path)
    if trainer.rank == 0:
        click.echo(f"step {trainer.step}: wrote {out} (state {checkpoint})")


def _training_data(data_spec: str, holdout: int, eval_images: int, crop: int | None):
    """(training images or CropPool, held-out images or None, image shape [C, H, W]) for ``--data``.

    Whole images: the last ``holdout`` images are held out. Crops: the last ``holdout`` images
    (photographs) are held out whole, and evaluated on ``eval_images`` fixed crops (seed 0).
    """
    from diffcodec.data import load_images
    from diffcodec.train import CropPool

    if crop is None:
        data = load_images(data_spec)
        if holdout >= len(data):
            raise ValueError(f"--holdout {holdout} leaves no training images ({len(data)} in {data_spec})")
        train_images = data.images[: len(data) - holdout] if holdout else data.images
        heldout = data.images[len(data) - holdout :][:eval_images] if holdout else None
        return train_images, heldout, data.shape
    if data_spec.startswith("photos:") and data_spec.count(":") == 1:
        from diffcodec.photos import load_photos

        images = [p.image for p in load_photos(data_spec.split(":", 1)[1])]
    elif Path(data_spec).is_dir():  # a folder of images of any sizes
        from diffcodec.data import image_files
        from diffcodec.images import read_image

        images = [read_image(f) for f in image_files(Path(data_spec))]
        if not images:
            raise ValueError(f"{data_spec}: no image files")
    else:
        images = list(load_images(data_spec).images)
    if holdout >= len(images):
        raise ValueError(f"--holdout {holdout} leaves no training images ({len(images)} in {data_spec}; with --crop it counts whole images)")
    pool = CropPool(images[: len(images) - holdout], crop)
    heldout = None
    if holdout:
        import torch

        heldout = CropPool(images[len(images) - holdout :], crop).draw(eval_images, torch.Generator().manual_seed(0)).numpy()
    return pool, heldout, pool.shape
