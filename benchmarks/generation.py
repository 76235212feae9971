"""Benchmark: batched greedy generation -- first and warm calls, one-at-a-time, and a bandwidth bound.

On the same prompts and model it times ``ssu.eval.generation.greedy_generate`` twice
(the first call pays any warm-up or compilation; each ``ssu eval`` is a fresh process
and pays it too), then a plain loop calling ``model.generate`` once per prompt, and
prints tokens/s, the first/warm ratio, the batched/one-at-a-time speed-up and how many
outputs are identical.

The bound: greedy decoding reads every weight once per step of a batch, so it cannot
beat ``batch x bandwidth / model bytes`` tokens/s; the bandwidth is measured here as
(bytes read + written) / s of a large device-to-device copy. Warm tokens/s is printed
as a percentage of that bound (prefill and KV-cache reads are ignored, so the bound
is loose for long prompts and small models).

    python benchmarks/generation.py --device cpu [--new-tokens 128]    # tiny model, synthetic corpus
    python benchmarks/generation.py --device cuda --shape 8b --dtype bfloat16   # random-init Llama-3.1-8B shape
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from data_prep import prepare_books, read_window_rows, write_synthetic_corpus
from ssu.engine.encoding import encode_pair
from ssu.eval.generation import CACHES, greedy_generate
from ssu.models.loading import load_model, load_tokenizer
from ssu.models.tiny import make_tiny_model


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def copy_bandwidth(device: torch.device) -> float:
    """Bytes read + written per second by a large device-to-device copy (best of 5)."""
    n = (1 << 30) if device.type == "cuda" else (256 << 20)
    src = torch.empty(n, dtype=torch.uint8, device=device).fill_(1)
    dst = torch.empty_like(src)
    dst.copy_(src)
    best = float("inf")
    for _ in range(5):
        sync(device)
        t = time.perf_counter()
        dst.copy_(src)
        sync(device)
        best = min(best, time.perf_counter() - t)
    return 2 * n / best


def timed(fn, cpu_seconds: list):
    """Run ``fn``; return its output and wall seconds, appending this process's CPU seconds
    (all threads) -- on a shared CPU they move less with other processes' load than wall time."""
    t, c = time.perf_counter(), time.process_time()
    out = fn()
    cpu_seconds.append(time.process_time() - c)
    return out, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="HF model dir (default: a fresh tiny model on a synthetic corpus)")
    ap.add_argument("--prepared", help="prepared dir matching --model")
    ap.add_argument("--shape", choices=["1b", "8b", "small"], help="random-init Llama of this shape "
                    "(benchmarks/gpu_step.py) instead of the tiny model; prompts from the synthetic corpus")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--cache", default="auto", choices=CACHES)
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--tokens-per-batch", type=int, default=None)
    ap.add_argument("--single", type=int, default=None, help="prompts for the one-at-a-time loop (default all)")
    ap.add_argument("--size", default="tiny", help="tiny-model size when no --model/--shape")
    ap.add_argument("--json", default=None, help="also write the figures to this file")
    args = ap.parse_args()
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)

    if args.model is None:
        work = Path(tempfile.mkdtemp(prefix="ssu-gen-"))
        write_synthetic_corpus(work / "corpus", n_books=6, words_per_book=2200)
        prepare_books(work / "corpus", work / "prepared")
        make_tiny_model(work / "prepared", work / "model", size=args.size)
        args.model, args.prepared = str(work / "model"), str(work / "prepared")
    tok = load_tokenizer(args.model)
    if args.shape:
        from gpu_step import build  # benchmarks/ is on sys.path when run as a script

        model = build(args.shape, device, dtype, tok).eval()
    else:
        model = load_model(args.model, device=str(device), dtype=args.dtype)
    windows = read_window_rows(args.prepared)[: args.prompts]
    prompts = [encode_pair(tok, w["prompt"], w["continuation"]).prompt_ids for w in windows]
    n_tokens = len(prompts) * args.new_tokens

    def batched():
        out = greedy_generate(model, tok, prompts, args.new_tokens, batch_size=args.batch_size,
                              tokens_per_batch=args.tokens_per_batch, cache=args.cache)
        sync(device)
        return out

    cpu: list[float] = []
    first, t_first = timed(batched, cpu)
    out, t_warm = timed(batched, cpu)
    singles = prompts[: args.single] if args.single else prompts

    def one_by_one():
        res = []
        with torch.no_grad():
            for p in singles:
                o = model.generate(torch.tensor([p], device=device), do_sample=False, max_new_tokens=args.new_tokens,
                                   pad_token_id=tok.pad_token_id)
                res.append(o[0, len(p):].tolist())
        sync(device)
        return res

    single, t_single = timed(one_by_one, cpu)
    same = sum(a == b[: len(a)] for a, b in zip(out, single))
    params = sum(p.numel() for p in model.parameters())
    model_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    bw = copy_bandwidth(device)
    rows = min(args.batch_size, len(prompts))
    bound = rows * bw / model_bytes
    mean_prompt = sum(map(len, prompts)) / len(prompts)
    print(f"model {args.shape or args.model}: {params:,} parameters, {model_bytes / 2**20:.1f} MiB {args.dtype}, "
          f"device {device}" + (f", torch threads {torch.get_num_threads()}" if device.type == "cpu" else ""))
    print(f"{len(prompts)} prompts x {args.new_tokens} new tokens, mean prompt {mean_prompt:.0f} tokens, "
          f"batch {args.batch_size}, cache {args.cache}")
    print(f"  batched, first call:  {t_first:8.2f} s  {n_tokens / t_first:9.0f} tokens/s")
    print(f"  batched, warm call:   {t_warm:8.2f} s  {n_tokens / t_warm:9.0f} tokens/s   "
          f"first/warm {t_first / t_warm:.2f}")
    print(f"  one prompt at a time: {t_single:8.2f} s  {len(singles) * args.new_tokens / t_single:9.0f} tokens/s "
          f"({len(singles)} prompts)")
    per_prompt_single = t_single / len(singles)
    print(f"  speed-up vs one at a time (per prompt): first call {per_prompt_single * len(prompts) / t_first:.1f}x, "
          f"warm call {per_prompt_single * len(prompts) / t_warm:.1f}x   identical outputs: {same}/{len(singles)}, "
          f"first call identical to warm: {first == out}")
    if device.type == "cpu":
        all_single = cpu[2] / len(singles) * len(prompts)
        print(f"  CPU seconds (process): first {cpu[0]:.2f}, warm {cpu[1]:.2f}, one at a time {cpu[2]:.2f} -> "
              f"speed-up first {all_single / cpu[0]:.1f}x, warm {all_single / cpu[1]:.1f}x")
    print(f"  copy bandwidth {bw / 1e9:.1f} GB/s -> bound {rows} x bandwidth / model bytes = {bound:,.0f} tokens/s; "
          f"warm call at {100 * n_tokens / t_warm / bound:.1f} % of it")
    if args.json:
        import json

        Path(args.json).write_text(json.dumps({
            "model": args.shape or Path(args.model).name, "parameters": params, "device": str(device),
            "dtype": args.dtype,
            "prompts": len(prompts), "new_tokens": args.new_tokens, "batch_size": args.batch_size,
            "first_s": t_first, "warm_s": t_warm, "single_s": t_single, "single_prompts": len(singles),
            "warm_tokens_per_s": n_tokens / t_warm, "speedup_warm": per_prompt_single * len(prompts) / t_warm,
            "identical": same, "bandwidth_gbs": bw / 1e9, "bound_fraction": n_tokens / t_warm / bound}, indent=1))


if __name__ == "__main__":
    main()
