"""Training throughput of S3-DiT through the real loop (``training.loop.train``).

    .venv/bin/python bench/train.py [--model tiny|small|6b] [--resolution 256 1024] [--steps 30]
                                    [--token-budget 16384] [--cap-tokens 128] [--compile] [--grad-checkpoint]
                                    [--lora RANK]

Batches are in-memory latents (16 x R/8 x R/8) and text features (``--cap-tokens`` x 2560 for
small/6b) of random values, sized by a token budget like the loader's batches, so this measures
the model + optimizer step alone (the loader has its own benchmark, bench/loader.py). For each
resolution it runs ``--steps`` steps, logs every ``steps/3``, and reports the last window
(after warm-up and compilation): samples/s, tokens/s, model FLOPs utilisation (on known GPUs,
bf16 peak: H100/H200 989 TFLOP/s dense), peak GPU memory. On a CPU (no bf16 autocast, fp32)
the figures are only a smoke check of the same code path.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

# the repository root instead of bench/ (whose profile.py would shadow the standard library's)
sys.path[0] = str(Path(__file__).resolve().parents[1])


def machine() -> str:
    import torch

    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        return f"{p.name}, {p.total_memory / 2**30:.0f} GiB, torch {torch.__version__}"
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"CPU only: {os.cpu_count()} cores, {mem:.0f} GiB, {platform.processor() or platform.machine()}, torch {torch.__version__}"


def run(
    model: str, resolution: int, steps: int, token_budget: int, cap_tokens: int, compile_: bool, ckpt: bool, lora: int | None = None
) -> dict:
    import torch

    from training.loop import BatchList, TrainConfig, train
    from training.model import CONFIGS

    mc = CONFIGS[model]()
    lat_side = resolution // 8
    img_tokens = (lat_side // mc.patch_size) ** 2
    bs = max(1, token_budget // (img_tokens + cap_tokens))
    g = torch.Generator().manual_seed(0)
    batches = [
        {
            "latents": [torch.randn(16, lat_side, lat_side, generator=g) for _ in range(bs)],
            "cap_feats": [torch.randn(cap_tokens, mc.cap_feat_dim, generator=g) for _ in range(bs)],
        }
        for _ in range(2)
    ]
    every = max(1, steps // 3)
    with tempfile.TemporaryDirectory() as d:
        cfg = TrainConfig(
            model=model,
            steps=steps,
            log_every=every,
            ckpt_every=10**9,
            ckpt_final=False,
            sample_count=0,
            compile=compile_,
            grad_checkpoint=ckpt,
            ema_decay=0.9999,
            out_dir=d,
            resume=False,
            warmup_steps=1,
            lora_rank=lora,
        )
        res = train(cfg, BatchList(batches), log=lambda _m: None)
    m = res["metrics"]
    return {"model": model, "resolution": resolution, "batch": bs, "seq": img_tokens + cap_tokens, **m}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None, help="default: small on a GPU, tiny on a CPU")
    ap.add_argument("--resolution", type=int, nargs="+", default=[256, 1024])
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--token-budget", type=int, default=16384)
    ap.add_argument("--cap-tokens", type=int, default=128)
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--grad-checkpoint", action="store_true")
    ap.add_argument("--json", action="store_true", help="one JSON line per run instead of a table")
    ap.add_argument("--lora", type=int, default=None, help="train LoRA adapters of this rank on a frozen base (the 6B single-GPU recipe)")
    a = ap.parse_args()

    import torch

    gpu = torch.cuda.is_available()
    model = a.model or ("small" if gpu else "tiny")
    steps = a.steps or (30 if gpu else 9)
    print(f"# S3-DiT training throughput - {machine()}")
    print(
        f"# model {model}, {steps} steps, token budget {a.token_budget}, caption {a.cap_tokens} tokens, "
        f"compile {a.compile}, grad checkpoint {a.grad_checkpoint}, LoRA rank {a.lora}, {'bf16 autocast' if gpu else 'fp32'}"
    )
    print("| res | batch | seq | samples/s | tokens/s | MFU | peak mem GiB |")
    print("|---|---|---|---|---|---|---|")
    for r in a.resolution:
        m = run(model, r, steps, a.token_budget, a.cap_tokens, a.compile, a.grad_checkpoint, a.lora)
        if a.json:
            print(json.dumps(m))
        mfu = f"{m['mfu']:.1%}" if "mfu" in m else "n/a"
        print(
            f"| {r}² | {m['batch']} | {m['seq']} | {m['samples_per_s']:.2f} | {m['tokens_per_s']:.0f} | {mfu} | "
            f"{m.get('peak_mem_gb', 'n/a')} |"
        )


if __name__ == "__main__":
    main()
