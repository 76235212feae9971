"""Benchmark: batched greedy generation vs one-prompt-at-a-time HF generate.

Prints tokens/s of ``ssu.eval.generation.greedy_generate`` (batch 32, left padding, KV
cache) and of a plain loop calling ``model.generate`` once per prompt, on the same
prompts and the same model, and their ratio (target: >= 8x on a 2-core CPU).

    python benchmarks/generation.py [--model DIR] [--prompts 64] [--new-tokens 64]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from data_prep import load_windows, prepare_books, write_synthetic_corpus
from ssu.engine.encoding import encode_pair
from ssu.eval.generation import greedy_generate
from ssu.models.loading import load_model, load_tokenizer
from ssu.models.tiny import make_tiny_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="HF model dir (default: a fresh tiny model on a synthetic corpus)")
    ap.add_argument("--prepared", help="prepared dir matching --model")
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--size", default="tiny")
    args = ap.parse_args()

    if args.model is None:
        work = Path(tempfile.mkdtemp(prefix="ssu-gen-"))
        write_synthetic_corpus(work / "corpus", n_books=6, words_per_book=2200)
        prepare_books(work / "corpus", work / "prepared")
        make_tiny_model(work / "prepared", work / "model", size=args.size)
        args.model, args.prepared = str(work / "model"), str(work / "prepared")
    tok = load_tokenizer(args.model)
    model = load_model(args.model, device="cpu")
    windows = load_windows(args.prepared).to_list()[: args.prompts]
    prompts = [encode_pair(tok, w["prompt"], w["continuation"]).prompt_ids for w in windows]
    n_tokens = len(prompts) * args.new_tokens

    t = time.perf_counter()
    batched = greedy_generate(model, tok, prompts, args.new_tokens, batch_size=args.batch_size)
    t_batched = time.perf_counter() - t

    t = time.perf_counter()
    single = []
    with torch.no_grad():
        for p in prompts:
            out = model.generate(torch.tensor([p]), do_sample=False, max_new_tokens=args.new_tokens,
                                 pad_token_id=tok.pad_token_id)
            single.append(out[0, len(p):].tolist())
    t_single = time.perf_counter() - t

    same = sum(a == b[: len(a)] for a, b in zip(batched, single))
    print(f"model {args.model}  ({sum(p.numel() for p in model.parameters()):,} parameters, "
          f"torch threads {torch.get_num_threads()})")
    mean_prompt = sum(map(len, prompts)) / len(prompts)
    print(f"{len(prompts)} prompts x {args.new_tokens} new tokens, mean prompt {mean_prompt:.0f} tokens")
    print(f"  batched (batch {args.batch_size}):   {t_batched:7.2f} s  {n_tokens / t_batched:9.0f} tokens/s")
    print(f"  one prompt at a time: {t_single:7.2f} s  {n_tokens / t_single:9.0f} tokens/s")
    print(f"  speed-up: {t_single / t_batched:.1f}x   identical outputs: {same}/{len(prompts)}")


if __name__ == "__main__":
    main()
