"""Relevance-map throughput: naive (one target at a time, 17 forward+backward passes through the full
Hugging Face model, ``naive_maps``) vs this project's ``AttentionRelevance`` (one batched VJP; last-block
through the class token's path only).

ViT-B/32-architecture CLIP with random weights (CLIPVisionConfig defaults: hidden 768, 12 layers,
patch 32, image 224, projection 512), random 256-d projection, random distiller, random pixels.

    python benchmarks/relevance_speed.py --n 16 --batch-size 8            # CPU
    python benchmarks/relevance_speed.py --n 1024 --batch-size 128        # GPU (bf16)

Prints the device and a table of img/s per method and mode, plus max|naive - batched| / max|naive|.
"""
from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from asap_core.method.distiller import Distiller, DistillerConfig
from asap_core.method.relevance import AttentionRelevance
from asap_core.model.device import relevance_batch_size
from asap_core.model.encoder import (
    CheckpointInfo,
    ClipEncoder,
    eager_attention,
    fold_quick_gelu,
)
from asap_core.model.preprocess import ClipPreprocessor
from asap_core.storage.schema import N_TARGETS


def build(dev: torch.device, dtype: torch.dtype, fold: bool = True) -> tuple[ClipEncoder, Distiller]:
    """Random ViT-B/32 CLIP vision tower (eager attention) and a random distiller on ``dev``.

    ``fold``: rewrite QuickGELU as SiLU like ``ClipEncoder.from_pretrained`` does (``fold_quick_gelu``).
    """
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    cfg = CLIPVisionConfig(projection_dim=512)
    vm = CLIPVisionModelWithProjection(cfg)
    if fold:
        fold_quick_gelu(vm)
    vm = vm.to(dev, dtype)
    vm.set_attn_implementation("eager")
    info = CheckpointInfo(model_id="random-b32", model_dir=Path("."), preprocessor=ClipPreprocessor(),
                          embed_dim=cfg.projection_dim, image_size=cfg.image_size,
                          patch_side=cfg.image_size // cfg.patch_size, fingerprint="random",
                          hidden_size=cfg.hidden_size)
    enc = ClipEncoder(vm, info, dev, dtype)
    proj = torch.linalg.qr(torch.randn(512, 256))[0].T  # [256, 512], orthonormal rows
    dist = Distiller(DistillerConfig(embed_dim=512, proj_dim=256), projection=proj).to(dev).eval()
    return enc, dist


def device_name(dev: torch.device) -> str:
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    return f"CPU {platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)"


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def naive_maps(explainer: AttentionRelevance, px: torch.Tensor) -> torch.Tensor:
    """The plain method, one target at a time: for each of the 17 targets a full Hugging Face forward
    (eager attention, every layer's attention kept) and one backward to the attentions, then the formula
    of ``asap_core.method.relevance`` written out. ``px [B, 3, S, S]`` -> ``[B, 17, side, side]`` float32 CPU."""
    enc, dist = explainer.encoder, explainer.distiller
    side = enc.patch_side
    out = []
    with torch.enable_grad(), eager_attention(enc.vision_model):
        for k in range(N_TARGETS):
            x = px.to(enc.device, enc.dtype).clone().requires_grad_(True)
            res = enc.vision_model(pixel_values=x, output_attentions=True)
            z, logit = dist(torch.nn.functional.normalize(res.image_embeds.float(), dim=-1))
            target = torch.cat([z, logit[:, None]], dim=1)[:, k].sum()  # images independent: per-image grads
            atts = res.attentions
            if explainer.method == "last-block":
                (g,) = torch.autograd.grad(target, atts[-1])
                cam = (g.float() * atts[-1].detach().float()).clamp(min=0).mean(dim=1)[:, 0, 1:]
            else:
                grads = torch.autograd.grad(target, atts)
                t = atts[0].shape[-1]
                r = torch.eye(t, device=x.device).expand(x.shape[0], t, t)
                for g, a in zip(grads, atts):
                    r = r + (g.float() * a.detach().float()).clamp(min=0).mean(dim=1) @ r
                cam = r[:, 0, 1:]
            out.append(cam.detach().cpu())
    return torch.stack(out, dim=1).reshape(px.shape[0], N_TARGETS, side, side)


def run(explainer: AttentionRelevance, px: torch.Tensor, batch_size: int, naive: bool) -> torch.Tensor:
    """All 17 maps for ``px`` [N, 3, 224, 224] -> [N, 17, 7, 7]: ``naive_maps``, or ``explainer.attribute``
    (one batched VJP; for last-block through ``ClipImageForward.class_token_attention``)."""
    out = []
    for i in range(0, len(px), batch_size):
        chunk = px[i:i + batch_size]
        out.append(naive_maps(explainer, chunk) if naive else explainer.attribute(chunk))
    return torch.cat(out)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=64, help="images per measurement")
    ap.add_argument("--batch-size", type=int, default=None, help="default: 128 on GPU, 8 on CPU")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda")
    ap.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16"], help="auto: bf16 on GPU, fp32 on CPU")
    ap.add_argument("--methods", default="last-block,rollout")
    ap.add_argument("--no-naive", action="store_true", help="skip the 17-pass baseline")
    args = ap.parse_args(argv)

    dev = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                       ("cpu" if args.device == "auto" else args.device))
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}.get(
        args.dtype, torch.bfloat16 if dev.type == "cuda" else torch.float32)
    bs = relevance_batch_size(dev, args.batch_size)
    enc, dist = build(dev, dtype)
    torch.manual_seed(1)
    px = torch.randn(args.n, 3, 224, 224)
    print(f"device: {device_name(dev)}   dtype: {str(dtype).replace('torch.', '')}   "
          f"images: {args.n}   batch: {bs}   torch {torch.__version__}")
    print(f"{'method':<11} {'mode':<22} {'img/s':>9} {'s total':>9} {'max rel. diff':>14}")
    for method in args.methods.split(","):
        explainer = AttentionRelevance(enc, dist, method)
        run(explainer, px[:min(bs, 2)], bs, naive=False)  # warm-up
        results = {}
        for naive in ([True, False] if not args.no_naive else [False]):
            _sync(dev)
            t0 = time.perf_counter()
            results[naive] = run(explainer, px, bs, naive)
            _sync(dev)
            dt = time.perf_counter() - t0
            mode = "naive (17 passes)" if naive else "batched VJP (1 pass)"
            diff = ""
            if not naive and True in results:
                ref = results[True].float()
                diff = f"{((ref - results[False].float()).abs().max() / ref.abs().max().clamp(min=1e-30)).item():.1e}"
            print(f"{method:<11} {mode:<22} {args.n / dt:>9.1f} {dt:>9.2f} {diff:>14}")


if __name__ == "__main__":
    main()
