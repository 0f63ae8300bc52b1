"""Time and peak memory of one PACL loss forward + backward at CLIP ViT-B/16 sizes, on CPU.

B = 256 images and their 256 texts, P = 196 patches (224 px / 16), D = 512. Each measurement runs
in a fresh Python process and reports the growth of its peak resident memory (``ru_maxrss``)
across the forward + backward pass. Why not ``tracemalloc``: it only sees allocations made through
Python's allocator, and torch allocates tensors in C++. Why a fresh process: ``ru_maxrss`` is a
high-water mark, so an earlier, larger peak in the same process would hide this one.

For contrast it prints the size of the ``[B, B, P, D]`` tensor a literal translation of PACL Eq. 2-3
would build (26 GB here), measures such a naive broadcast at a small batch, and checks on a small
case that :func:`utils.pacl.pacl_loss` equals a loop over images, texts and patches. Prints
figures; not a test.

    .venv/bin/python bench/pacl_memory.py [--batch 256] [--patches 196] [--dim 512] [--naive-batch 32]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

from utils.losses import contrastive_loss_from_logits
from utils.pacl import pacl_loss

FLOAT32_BYTES = 4
LOGIT_SCALE = 1 / 0.07
REPEATS = 3


def naive_broadcast_loss(patch_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale: float
                         ) -> torch.Tensor:
    """PACL loss through an explicit ``[B, T, P, D]`` tensor (what pacl_compatibility avoids)."""
    patches = patch_emb[:, None]                                   # [B, 1, P, D]
    texts = text_emb[None, :, None]                                # [1, T, 1, D]
    scores = F.cosine_similarity(patches, texts, dim=-1)           # [B, T, P]
    weighted = scores.softmax(-1)[..., None] * patches             # [B, T, P, D]
    compatibility = F.cosine_similarity(weighted.sum(2), text_emb[None], dim=-1)
    return contrastive_loss_from_logits(logit_scale * compatibility)


def loop_loss(patch_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale: float
              ) -> torch.Tensor:
    """PACL loss with the compatibility computed one image, text and patch at a time."""
    compatibility = torch.zeros(len(patch_emb), len(text_emb), dtype=patch_emb.dtype)
    for b, patches in enumerate(patch_emb):
        for t, text in enumerate(text_emb):
            scores = torch.stack([F.cosine_similarity(p, text, dim=0) for p in patches])
            pooled = sum(w * p for w, p in zip(scores.softmax(0), patches, strict=True))
            compatibility[b, t] = F.cosine_similarity(pooled, text, dim=0)
    return contrastive_loss_from_logits(logit_scale * compatibility)


def max_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def measure(kind: str, batch: int, patches: int, dim: int) -> dict:
    """In this (fresh) process: seconds per forward + backward and the peak-memory growth."""
    loss_fn = pacl_loss if kind == "pacl" else naive_broadcast_loss
    generator = torch.Generator().manual_seed(0)
    patch_emb = torch.randn(batch, patches, dim, generator=generator, requires_grad=True)
    text_emb = torch.randn(batch, dim, generator=generator, requires_grad=True)

    def step() -> None:
        loss_fn(patch_emb, text_emb, LOGIT_SCALE).backward()
        patch_emb.grad = text_emb.grad = None

    # Warm up on a small slice so library start-up memory is not counted as the loss's.
    small = patch_emb[:2].detach().requires_grad_(), text_emb[:2].detach().requires_grad_()
    loss_fn(*small, LOGIT_SCALE).backward()
    before = max_rss_bytes()
    seconds = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        step()
        seconds.append(time.perf_counter() - start)
    return {"seconds": statistics.median(seconds), "peak_growth": max_rss_bytes() - before,
            "inputs": (patch_emb.numel() + text_emb.numel()) * FLOAT32_BYTES}


def run_child(kind: str, batch: int, patches: int, dim: int) -> dict:
    command = [sys.executable, __file__, "--child", kind, "--batch", str(batch),
               "--patches", str(patches), "--dim", str(dim)]
    return json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)


def check_against_loop() -> float:
    """Largest difference of pacl_loss from the loop and the naive broadcast (raises if not close)."""
    generator = torch.Generator().manual_seed(1)
    patch_emb = torch.randn(5, 7, 8, generator=generator, dtype=torch.float64)
    text_emb = torch.randn(5, 8, generator=generator, dtype=torch.float64)
    fast = pacl_loss(patch_emb, text_emb, LOGIT_SCALE)
    others = [loss(patch_emb, text_emb, LOGIT_SCALE) for loss in (loop_loss, naive_broadcast_loss)]
    for other in others:
        torch.testing.assert_close(fast, other)
    return max(abs(fast - other).item() for other in others)


def size(n_bytes: float) -> str:
    """Decimal units, as the 26 GB figure is usually quoted (1 GB = 10^9 bytes)."""
    return f"{n_bytes / 1e9:.1f} GB" if n_bytes >= 1e9 else f"{n_bytes / 1e6:.0f} MB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--patches", type=int, default=196)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--naive-batch", type=int, default=32)
    parser.add_argument("--child", choices=("pacl", "naive"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.batch, args.patches, args.dim)))
        return

    b, p, d = args.batch, args.patches, args.dim
    print(f"PACL loss forward + backward on CPU ({torch.get_num_threads()} threads), "
          f"B = T = {b}, P = {p}, D = {d}, float32, median of {REPEATS}")
    print(f"  loop check (B=5, P=7, D=8, float64): |pacl_loss - loop / naive| <= {check_against_loop():.1e}")
    print(f"  a naive [B, B, P, D] tensor would need {size(b * b * p * d * FLOAT32_BYTES)}")
    print(f"  largest tensors here: [B, T, P] {size(b * b * p * FLOAT32_BYTES)}, "
          f"[B, T, D] {size(b * b * d * FLOAT32_BYTES)}")
    result = run_child("pacl", b, p, d)
    print(f"  pacl_loss:            {result['seconds']:.2f} s, peak memory growth "
          f"{size(result['peak_growth'])} (inputs {size(result['inputs'])})")
    nb = args.naive_batch
    for kind in ("pacl", "naive"):
        result = run_child(kind, nb, p, d)
        print(f"  B = {nb} {kind:<6}        {result['seconds']:.2f} s, peak memory growth "
              f"{size(result['peak_growth'])}"
              + (f" ([B, B, P, D] is {size(nb * nb * p * d * FLOAT32_BYTES)})"
                 if kind == "naive" else ""))


if __name__ == "__main__":
    main()
