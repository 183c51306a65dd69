"""How much faster is KV-cache decoding than recomputing the whole sequence at every step?

    python scripts/bench_generate.py [--new-tokens 512] [--prompt-tokens 16] [--batch-size 1] [--threads N]

The model is the `gpt` CPU preset's shape (conf/model/gpt.yaml: 4 layers, d_model 256, 4 heads, learned positions)
at its default 8192-token vocabulary, with random weights: speed does not depend on what the weights learned.
Both modes run lmpre.inference.generate greedily from the same random prompt, one after the other in this process;
they must give the same tokens (checked). Reported: new tokens per second of each (all rows of the batch counted),
and their ratio. On a CPU that other processes keep busy, `--threads 1` gives steadier numbers: torch's threads
then wait on each other for the cores (a one-token attention step suffers most).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any, cast

import torch
from omegaconf import OmegaConf

from lmpre.inference import generate
from lmpre.models import Transformer, TransformerConfig

PRESET = Path(__file__).resolve().parents[1] / "conf" / "model" / "gpt.yaml"


def model_of_preset(vocab_size: int, device: str) -> Transformer:
    backbone = cast(dict[str, Any], OmegaConf.to_container(OmegaConf.load(PRESET).backbone))
    torch.manual_seed(0)
    return Transformer(TransformerConfig(**{**backbone, "vocab_size": vocab_size})).to(device).eval()


def timed(model: Transformer, prompt: torch.Tensor, new_tokens: int, use_cache: bool) -> tuple[float, torch.Tensor]:
    if prompt.is_cuda:
        torch.cuda.synchronize()
    began = time.perf_counter()
    tokens = torch.stack(list(generate(model, prompt, max_new_tokens=new_tokens, use_cache=use_cache)), dim=1)
    if prompt.is_cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - began, tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--new-tokens", type=int, default=512)
    parser.add_argument("--prompt-tokens", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--vocab-size", type=int, default=8192)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    model = model_of_preset(args.vocab_size, args.device)
    generator = torch.Generator().manual_seed(0)
    prompt = torch.randint(args.vocab_size, (args.batch_size, args.prompt_tokens), generator=generator)
    prompt = prompt.to(args.device)
    for use_cache in (True, False):  # warm-up: allocator, kernels
        timed(model, prompt, 8, use_cache)
    cached_s, cached = timed(model, prompt, args.new_tokens, use_cache=True)
    full_s, full = timed(model, prompt, args.new_tokens, use_cache=False)
    if not torch.equal(cached, full):
        raise SystemExit("KV-cache decoding and full recomputation gave different tokens")

    n = cached.numel()
    print(
        f"gpt preset shape ({model.num_parameters():,} parameters without embeddings), device {args.device}, "
        f"{torch.get_num_threads()} threads: batch {args.batch_size}, prompt {args.prompt_tokens} tokens, "
        f"{cached.size(1)} new tokens"
    )
    print(f"{'decoding':<22}{'seconds':>10}{'tokens/s':>12}")
    print(f"{'KV cache':<22}{cached_s:>10.2f}{n / cached_s:>12.1f}")
    print(f"{'full recomputation':<22}{full_s:>10.2f}{n / full_s:>12.1f}")
    print(f"KV cache / full recomputation: {full_s / cached_s:.1f}x tokens/s (same tokens: yes)")


if __name__ == "__main__":
    main()
