"""Make the embedded demo set ``asap_core/demo_data/`` offline, from scikit-learn's two sample photographs.

real/      varied crops of ``china.jpg`` and ``flower.jpg`` (random position and scale, flips, small colour
           jitter), ``SIZE`` px square JPEGs.
fake/vae/  samples of a small convolutional VAE trained here, on CPU, on crops of the same photographs.
fake/gan/  samples of a small DCGAN trained the same way.

Deterministic given ``--seed`` (same torch / Pillow versions and thread count). Takes about two minutes
on one CPU core. Usage: ``python scripts/make_demo_data.py [--out DIR] [--seed 0]``.
"""
from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageEnhance
from torch import nn

SIZE = 112  # side of every demo image (px)
TRAIN_SIZE = 56  # side the generative networks learn at (px); samples are upsampled to SIZE
QUALITY = 90
CL = torch.channels_last  # 2-3x faster than NCHW for these small convs on CPU
OUT = Path(__file__).resolve().parents[1] / "asap_core" / "demo_data"


def sample_photos() -> list[Image.Image]:
    """scikit-learn's bundled sample photographs (china.jpg, flower.jpg) as PIL RGB images, 640x427."""
    from sklearn.datasets import load_sample_images

    return [Image.fromarray(a).convert("RGB") for a in load_sample_images().images]


def random_crop(photo: Image.Image, rng: np.random.Generator, size: int, jitter: bool = True) -> Image.Image:
    """A square crop of ``photo`` at a random position and scale (15-60 % of the short side), resized to ``size``.

    With ``jitter``: random horizontal flip and +-12 % brightness, contrast and saturation.
    """
    w, h = photo.size
    side = int(rng.uniform(0.15, 0.6) * min(w, h))
    x = int(rng.integers(0, w - side + 1))
    y = int(rng.integers(0, h - side + 1))
    img = photo.crop((x, y, x + side, y + side)).resize((size, size), Image.Resampling.LANCZOS)
    if jitter:
        if rng.random() < 0.5:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        for enhance in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
            img = enhance(img).enhance(float(rng.uniform(0.88, 1.12)))
    return img


def training_tensor(photos: list[Image.Image], n: int, rng: np.random.Generator) -> torch.Tensor:
    """``n`` random crops at ``TRAIN_SIZE`` px as a tensor ``[n, 3, S, S]`` in [-1, 1]."""
    crops = [np.asarray(random_crop(photos[i % len(photos)], rng, TRAIN_SIZE)) for i in range(n)]
    x = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    return x.contiguous(memory_format=CL)


def _up(c_in: int, c_out: int) -> list[nn.Module]:
    """2x nearest upsampling + 3x3 conv (faster than a transposed conv on CPU, no checkerboard)."""
    return [nn.Upsample(scale_factor=2), nn.Conv2d(c_in, c_out, 3, 1, 1, bias=False), nn.BatchNorm2d(c_out),
            nn.ReLU(True)]


def _down(c_in: int, c_out: int, norm: bool = True) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 4, 2, 1, bias=not norm), *([nn.BatchNorm2d(c_out)] if norm else []),
            nn.LeakyReLU(0.2, True)]


class Decoder(nn.Module):
    """Latent ``[B, Z]`` -> image ``[B, 3, 56, 56]`` in [-1, 1] (7x7 seed, three 2x upsampling blocks)."""

    def __init__(self, z_dim: int, width: int = 16) -> None:
        super().__init__()
        self.width = width
        self.fc = nn.Sequential(nn.Linear(z_dim, 4 * width * 7 * 7), nn.ReLU(True))
        self.net = nn.Sequential(*_up(4 * width, 2 * width), *_up(2 * width, width), *_up(width, width // 2),
                                 nn.Conv2d(width // 2, 3, 3, 1, 1), nn.Tanh())

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(self.fc(z).view(len(z), 4 * self.width, 7, 7))


class Encoder(nn.Module):
    """Image ``[B, 3, 56, 56]`` -> ``[B, out]`` (three 2x strided convs to 7x7, then linear)."""

    def __init__(self, out: int, width: int = 16) -> None:
        super().__init__()
        self.net = nn.Sequential(*_down(3, width // 2, norm=False), *_down(width // 2, width),
                                 *_down(width, 2 * width), nn.Flatten(), nn.Linear(2 * width * 7 * 7, out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def train_vae(data: torch.Tensor, steps: int, z_dim: int = 32, batch: int = 32) -> Decoder:
    """Train a conv VAE on ``data [N, 3, 56, 56]`` for ``steps`` Adam steps; returns its decoder."""
    enc, dec = Encoder(2 * z_dim).to(memory_format=CL), Decoder(z_dim).to(memory_format=CL)
    opt = torch.optim.Adam([*enc.parameters(), *dec.parameters()], lr=2e-3)
    t0 = time.perf_counter()
    for _ in range(steps):
        x = data[torch.randint(len(data), (batch,))]
        mu, logvar = enc(x).chunk(2, dim=1)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
        rec = ((dec(z) - x) ** 2).sum(dim=(1, 2, 3)).mean()
        kl = -0.5 * (1 + logvar - mu**2 - logvar.exp()).sum(1).mean()
        loss = rec / 0.1 + kl  # a sharper-than-default reconstruction weight
        opt.zero_grad()
        loss.backward()
        opt.step()
    print(f"vae: {steps} steps in {time.perf_counter() - t0:.0f}s, last loss {loss.item():.1f}")
    return dec.eval()


def train_gan(data: torch.Tensor, steps: int, z_dim: int = 64, batch: int = 32) -> Decoder:
    """Train a small DCGAN (non-saturating loss) on ``data [N, 3, 56, 56]`` for ``steps`` steps; returns G."""
    gen, disc = Decoder(z_dim).to(memory_format=CL), Encoder(1).to(memory_format=CL)
    opt_g = torch.optim.Adam(gen.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(disc.parameters(), lr=2e-4, betas=(0.5, 0.999))
    bce = nn.BCEWithLogitsLoss()
    ones, zeros = torch.ones(batch, 1), torch.zeros(batch, 1)
    t0 = time.perf_counter()
    for _ in range(steps):
        real = data[torch.randint(len(data), (batch,))]
        fake = gen(torch.randn(batch, z_dim))
        loss_d = bce(disc(real), ones * 0.9) + bce(disc(fake.detach()), zeros)
        opt_d.zero_grad()
        loss_d.backward()
        opt_d.step()
        loss_g = bce(disc(fake), ones)
        opt_g.zero_grad()
        loss_g.backward()
        opt_g.step()
    print(f"gan: {steps} steps in {time.perf_counter() - t0:.0f}s, last D {loss_d.item():.2f} G {loss_g.item():.2f}")
    return gen.eval()


@torch.no_grad()
def sample(decoder: Decoder, n: int, z_dim: int) -> list[Image.Image]:
    """``n`` samples as ``SIZE`` px PIL images (bicubic upsampling from the network's 56 px)."""
    x = decoder(torch.randn(n, z_dim))
    arr = ((x.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
    return [Image.fromarray(a).resize((SIZE, SIZE), Image.Resampling.BICUBIC) for a in arr]


def save_all(images: list[Image.Image], folder: Path, prefix: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(images):
        img.save(folder / f"{prefix}_{i:03d}.jpg", quality=QUALITY)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n-real", type=int, default=150)
    ap.add_argument("--n-fake", type=int, default=75, help="per generator")
    ap.add_argument("--train-crops", type=int, default=2048)
    ap.add_argument("--vae-steps", type=int, default=600)
    ap.add_argument("--gan-steps", type=int, default=800)
    args = ap.parse_args(argv)

    torch.set_num_threads(1)  # deterministic, and faster than 2 threads for convs this small
    rng = np.random.default_rng(args.seed)
    torch.manual_seed(args.seed)
    photos = sample_photos()
    for sub in ("real", "fake"):
        shutil.rmtree(args.out / sub, ignore_errors=True)

    reals = [random_crop(photos[i % len(photos)], rng, SIZE) for i in range(args.n_real)]
    save_all(reals, args.out / "real", "photo")
    data = training_tensor(photos, args.train_crops, rng)
    torch.manual_seed(args.seed + 1)
    save_all(sample(train_vae(data, args.vae_steps), args.n_fake, 32), args.out / "fake" / "vae", "vae")
    torch.manual_seed(args.seed + 2)
    save_all(sample(train_gan(data, args.gan_steps), args.n_fake, 64), args.out / "fake" / "gan", "gan")

    files = sorted(p for p in args.out.rglob("*.jpg"))
    total = sum(p.stat().st_size for p in files)
    for sub in ("real", "fake/vae", "fake/gan"):
        print(f"wrote {len(list((args.out / sub).glob('*.jpg'))):4d} JPEGs to {args.out / sub}")
    print(f"total {len(files)} images, {total / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
