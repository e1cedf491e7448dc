"""Tissue-classifier inference speed (patches/s) for every architecture, on this machine's CPU.

Eval mode, no gradients, batches of 32 random patches (speed does not depend on content),
at the input size histoscope trains them at here (64 px; Inception-v3 80 px) and at the
papers' sizes (224 px; Inception-v3 299 px). Best of ``--repeats`` timed batches after a
warm-up batch. Writes ``benchmarks/out/tissue_inference.json``.

Usage::

    .venv/bin/python benchmarks/tissue_inference.py [--threads 2] [--repeats 3] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "out")
    args = ap.parse_args()

    import torch

    from histoscope.models import create_model, list_models

    torch.set_num_threads(args.threads)
    sizes = {"small_cnn": (64, 224), "resnet50": (64, 224), "densenet121": (64, 224), "inception_v3": (80, 299)}
    rows = []
    for arch in list_models():
        for size in sizes.get(arch, (64, 224)):
            model = create_model(arch, num_classes=5, input_size=size).to(args.device).eval()
            x = torch.rand(args.batch, 3, size, size, device=args.device)
            with torch.inference_mode():
                model(x)
                best = float("inf")
                for _ in range(args.repeats):
                    if args.device.startswith("cuda"):
                        torch.cuda.synchronize()
                    t0 = time.perf_counter()
                    model(x)
                    if args.device.startswith("cuda"):
                        torch.cuda.synchronize()
                    best = min(best, time.perf_counter() - t0)
            params = sum(p.numel() for p in model.parameters()) / 1e6
            rows.append({"arch": arch, "input": size, "patches_per_s": args.batch / best, "params_m": params})
            print(f"{arch:14} {size:4d} px  {args.batch / best:8.1f} patches/s  ({params:.1f} M parameters)", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "tissue_inference.json").write_text(json.dumps({"threads": args.threads, "device": args.device, "batch": args.batch, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
