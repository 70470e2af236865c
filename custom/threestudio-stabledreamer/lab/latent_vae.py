"""The lab's latent space: a small ``AutoencoderKL`` fitted to renders of the lab's objects.

Stage 2 distils Stable Diffusion in the latent space of its VAE. The lab's stage-2 prior
(``guidance.lab.LabLatentGuidance``) is the exact posterior mean over the latents of
reference renders, so its pull on a render is a pull in latent space, and it only implies
a pull towards the reference *image* if the encoder keeps what tells images apart and the
decoder maps latents back to the images they came from. An unfitted, random encoder does
neither: it can merge different renders into nearby latents (the prior would then be
satisfied by a wrong image) and its latent distances do not track image distances, so a
latent score would not be a known answer about pixels. Hence a VAE fitted to the lab's
own renders, checked by its reconstruction PSNR on held-out renders.

The model is the real diffusers class, saved with ``save_pretrained`` in Stable
Diffusion's layout (``vae/`` and the SD 2.1-base ``scheduler/``), so the stage-2 guidance
loads it through the same ``from_pretrained(path, subfolder="vae")`` call as
``stabilityai/stable-diffusion-2-1-base``. It downsamples by 4 (three resolution levels)
rather than SD's 8: the lab renders 64 pixels wide, and 16 x 16 latents of 4 channels
keep the objects' parts apart where 8 x 8 would not; the guidance reads the factor from
the VAE's config. Its ``scaling_factor`` is set as SD's was: one over the standard deviation
of the training renders' latents, so the scaled latents have unit variance and the noise
schedule blurs the prior at the same timesteps as SD's.

The encoder is deterministic, as Stable Diffusion's nearly is: the log-variance half of
``quant_conv`` is held at ``LOG_VARIANCE`` (posterior std 4.5e-5 against a latent spread
of 0.68). The guidance encodes renders with ``posterior.sample()``, as threestudio's does,
so a wide posterior would add the encoder's own variance to the expected latent loss, and
its gradient would move renders towards images the encoder is surer of instead of towards
the prior (with a learned posterior whose std was a third of the latent spread, the
head's back views brightened by 0.04). Fitting: renders of every lab object from random
cameras in the config's ranges over white and black backgrounds, reconstruction error
plus a small KL term (with the variance fixed, an L2 pull on the latent means), Adam, a
fixed seed; 40 s on two CPU threads. ``fit_lab_vae(root)`` fits once and caches
the result under ``root`` (a marker file with the format version marks a complete fit).
"""
import json
import math
from pathlib import Path
from typing import Dict

import torch
import torch.nn.functional as F

from ..tiny_models import build_then_rename, sd_scheduler
from .objects import OBJECTS, make_object
from .render import look_at_origin, render_object

FORMAT_VERSION = 3
SEED = 0
MARKER_NAME = "lab-vae.json"
RESOLUTION = 64
DOWNSAMPLING = 4
TRAIN_RENDERS = 384
HELD_OUT_RENDERS = 48
STEPS = 500
BATCH = 8
LEARNING_RATE = 2e-3
KL_WEIGHT = 1e-6
LOG_VARIANCE = -20.0  # the encoder's fixed log sigma^2 per latent
# the config's random-camera ranges (configs/stabledreamer.yaml, data)
ELEVATION_RANGE = (-10.0, 60.0)
DISTANCE_RANGE = (1.5, 2.0)
FOVY_RANGE_DEG = (40.0, 70.0)
BACKGROUNDS = ((1.0, 1.0, 1.0), (0.0, 0.0, 0.0))


def lab_vae_config() -> dict:
    """``AutoencoderKL`` arguments: 4 latent channels, downsampling ``DOWNSAMPLING``."""
    levels = int(math.log2(DOWNSAMPLING)) + 1
    return dict(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        block_out_channels=(16,) + (32,) * (levels - 1),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=RESOLUTION,
        scaling_factor=1.0,  # set from the fitted latents
    )


@torch.no_grad()
def lab_renders(count: int, generator: torch.Generator, resolution: int = RESOLUTION) -> torch.Tensor:
    """``count`` renders [N,3,r,r] in [0, 1]: the lab's objects in turn, random cameras in the
    config's ranges, backgrounds alternating white and black."""
    def uniform(bounds):
        return bounds[0] + (bounds[1] - bounds[0]) * torch.rand(count, generator=generator)

    c2w = look_at_origin(uniform(ELEVATION_RANGE), 360.0 * torch.rand(count, generator=generator),
                         uniform(DISTANCE_RANGE))
    fovy = torch.deg2rad(uniform(FOVY_RANGE_DEG))
    images = torch.empty(count, 3, resolution, resolution)
    names = sorted(OBJECTS)
    for index, name in enumerate(names):
        obj = make_object(name)
        for b, background in enumerate(BACKGROUNDS):
            rows = torch.arange(count)[(torch.arange(count) % len(names) == index)
                                       & ((torch.arange(count) // len(names)) % len(BACKGROUNDS) == b)]
            if len(rows):
                render = render_object(obj, c2w[rows], fovy[rows], resolution, resolution, background)
                images[rows] = render.rgb.permute(0, 3, 1, 2)
    return images


def reconstruction_psnr(vae, images: torch.Tensor) -> float:
    """Mean PSNR (dB) of decode(mean of encode(images)) against images [N,3,r,r] in [0, 1]."""
    with torch.no_grad():
        latents = vae.encode(images * 2.0 - 1.0).latent_dist.mode()
        decoded = (vae.decode(latents).sample * 0.5 + 0.5).clamp(0.0, 1.0)
    mse = ((decoded - images) ** 2).flatten(1).mean(1)
    return float((-10.0 * torch.log10(mse)).mean())


def fix_log_variance(vae, log_variance: float) -> None:
    """Hold the encoder's posterior log-variance at ``log_variance`` for every input.

    ``quant_conv`` maps the encoder's features to [mean, log-variance] along channels; its
    log-variance half gets zero weights, bias ``log_variance`` and a zero gradient (Adam
    then leaves it as it is)."""
    channels = vae.config.latent_channels
    conv = vae.quant_conv
    with torch.no_grad():
        conv.weight[channels:] = 0.0
        conv.bias[channels:] = log_variance
    keep_mean_half = torch.ones(2 * channels)
    keep_mean_half[channels:] = 0.0
    conv.weight.register_hook(lambda grad: grad * keep_mean_half.view(-1, 1, 1, 1))
    conv.bias.register_hook(lambda grad: grad * keep_mean_half)


def fit_vae(steps: int = STEPS, train_renders: int = TRAIN_RENDERS):
    """A fitted ``AutoencoderKL`` and its held-out reconstruction PSNR (dB)."""
    from diffusers import AutoencoderKL

    generator = torch.Generator().manual_seed(SEED)
    train = lab_renders(train_renders, generator)
    held_out = lab_renders(HELD_OUT_RENDERS, generator)
    torch.manual_seed(SEED)
    vae = AutoencoderKL(**lab_vae_config())
    fix_log_variance(vae, LOG_VARIANCE)
    optimizer = torch.optim.Adam(vae.parameters(), lr=LEARNING_RATE)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    for _ in range(steps):
        batch = train[torch.randint(len(train), (BATCH,), generator=generator)] * 2.0 - 1.0
        posterior = vae.encode(batch).latent_dist
        decoded = vae.decode(posterior.sample(generator=generator)).sample
        loss = F.mse_loss(decoded, batch) + KL_WEIGHT * posterior.kl().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    vae.eval().requires_grad_(False)
    with torch.no_grad():
        latents = torch.cat([vae.encode(chunk * 2.0 - 1.0).latent_dist.mode() for chunk in train.split(64)])
    vae.register_to_config(scaling_factor=float(1.0 / latents.std()))
    return vae, reconstruction_psnr(vae, held_out)


def fit_lab_vae(root: Path) -> Path:
    """Fit the lab VAE into ``root`` once (``vae/``, ``scheduler/``); return ``root``.

    A complete fit is marked by a marker file with the format version; otherwise the fit
    is written to a temporary sibling directory that then replaces ``root`` by a rename."""
    root = Path(root).resolve()
    if _is_complete(root):
        return root

    def fit_into(staging: Path) -> None:
        with torch.random.fork_rng(devices=[]):
            vae, psnr = fit_vae()
        vae.save_pretrained(staging / "vae", safe_serialization=True)
        sd_scheduler("epsilon").save_pretrained(staging / "scheduler")
        marker = {"format_version": FORMAT_VERSION, "seed": SEED, "steps": STEPS,
                  "held_out_psnr_db": round(psnr, 2), "scaling_factor": vae.config.scaling_factor}
        (staging / MARKER_NAME).write_text(json.dumps(marker, indent=2), encoding="utf-8")

    build_then_rename(root, fit_into, _is_complete)
    return root


def fit_report(root: Path) -> Dict[str, object]:
    """The marker of a complete fit under ``root``."""
    return json.loads((Path(root) / MARKER_NAME).read_text(encoding="utf-8"))


def _is_complete(root: Path) -> bool:
    marker = root / MARKER_NAME
    if not marker.is_file():
        return False
    try:
        return json.loads(marker.read_text(encoding="utf-8")).get("format_version") == FORMAT_VERSION
    except json.JSONDecodeError:
        return False


def main(argv=None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description="Fit the lab's AutoencoderKL to renders of its objects (once).")
    parser.add_argument("--out", type=Path, required=True, help="directory to fit into (vae/, scheduler/)")
    args = parser.parse_args(argv)
    print(json.dumps({"path": str(fit_lab_vae(args.out)), **fit_report(args.out)}, indent=2))


if __name__ == "__main__":
    main()
