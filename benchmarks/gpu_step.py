"""Benchmark: one SSU step vs the public reference's loop on Llama models of real shapes.

Builds a random-init Llama of the Llama-3.2-1B (``1b``) or Llama-3.1-8B (``8b``) shape
from its config alone (no download; only speed and memory are meaningful), or a
``small`` shape for CPUs, prepares the first 65 windows of 100 + 100 words of Gutenberg
book 1 (``$SSU_GUTENBERG`` or ``../shared/data/gutenberg``), and runs in one process,
one after the other:

- **reference**: the public code's loop -- bf16 weights, LoRA r=32 on every linear
  projection, every sequence padded to 400 tokens, 8 rows per iteration (batch 2 x
  (1 + K=3)) in two forwards, two backwards per iteration (the second adds the unmasked
  gradient back), the saliency threshold over one concatenation of every gradient,
  AdamW stepping every 2 iterations;
- **ours**: ssu's engine (``ssu.engine.finetune``) on the same windows with the run
  config's defaults and ``--set`` overrides (e.g. ``--set train.windows_per_backward=2``),
  through the same precision policy as ``ssu step`` (LoRA: the bf16 base, float32
  adapter; full: float32 master weights under bf16 autocast).

It prints train seconds, peak accelerator memory (CUDA) or peak RSS (CPU), tokens/s
(attention-mask tokens; the reference counts its padding too), and the fraction of a
bf16 matmul peak it measures itself on the device (a large square matmul), using
≈ 4·N FLOPs per token for LoRA (no weight gradients) and 6·N for a full fine-tune.

    python benchmarks/gpu_step.py --shape small --device cpu --windows 16   # any machine, ~1 min
    python benchmarks/gpu_step.py --shape 1b --device cuda
    python benchmarks/gpu_step.py --shape 8b --device cuda
    python benchmarks/gpu_step.py --shape 1b --device cuda --finetune full
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import tempfile
import time
from pathlib import Path

import torch

SHAPES = {  # the public configs' shapes (Llama-3.2-1B, Llama-3.1-8B) and a CPU-sized one
    "1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
               num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=True),
    "8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=False),
    "small": dict(hidden_size=256, intermediate_size=704, num_hidden_layers=4, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=8192, tie_word_embeddings=False),
    # wide and shallow, a small vocabulary: on a CPU the weights outweigh a step's activations
    # (recipe_memory.py --size wide: the per-weight state a component adds shows in the peak)
    "wide": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=4, num_attention_heads=12,
                 num_key_value_heads=4, vocab_size=2048, tie_word_embeddings=True),
    # the 1B/8B vocabulary on a small trunk: a step's activations are mostly logits, as a 1B
    # model's retain rows are (recipe_memory.py --size vocab)
    "vocab": dict(hidden_size=256, intermediate_size=704, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=128256, tie_word_embeddings=True),
}
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
PAD_TO, K, EPSILON, BATCH, ACCUM = 400, 3, 0.5, 2, 2


def books_dir() -> Path:
    here = Path(__file__).resolve().parents[1]
    return Path(os.environ.get("SSU_GUTENBERG", here.parent / "shared" / "data" / "gutenberg"))


def prepare(work: Path, windows: int, books: str | None = None) -> Path:
    """``windows`` windows of 100 + 100 words: of Gutenberg book 1, or (``books="synthetic"``) of a
    synthetic book -- the CPU-size check in the test suite needs no data outside the repository."""
    from data_prep import prepare_books, write_synthetic_corpus

    if books == "synthetic":
        write_synthetic_corpus(work / "books", n_books=1, seed=0, words_per_book=windows * 200 + 50)
    else:
        src = Path(books) / "time_step_1" if books else books_dir() / "time_step_1"
        if not src.is_dir():
            raise SystemExit(f"error: {src} not found (set SSU_GUTENBERG to the gutenberg directory, "
                             "or pass --books synthetic)")
        (work / "books").mkdir(parents=True)
        (work / "books" / "time_step_1").symlink_to(src)
    prepare_books(work / "books", work / "prepared", max_words=windows * 200)
    return work / "prepared"


def build(shape: str, device: torch.device, dtype: torch.dtype, tokenizer):
    from transformers import AutoModelForCausalLM, LlamaConfig

    cfg = LlamaConfig(**SHAPES[shape], max_position_embeddings=4096, pad_token_id=tokenizer.pad_token_id,
                      bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    return model


def matmul_peak(device: torch.device) -> float:
    """bf16 FLOP/s of a large square matmul on ``device`` (the achievable peak, measured). On a CPU
    bf16 matmuls without AMX run far below float32 (6 products at 1024 took 16 s on a 2-core EPYC),
    so the share of it means nothing there: a 256 product keeps the column and not the wait."""
    n = 8192 if device.type == "cuda" else 256
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    sync(device)
    reps = 20 if device.type == "cuda" else 3
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - t0)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 1e9
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # KiB -> GB, the process's peak


def reference(model, fs, pad_id: int, device: torch.device, lr: float) -> dict:
    """The public code's loop (see the module docstring) on the forget set's pairs."""
    import torch.nn.functional as F
    from peft import LoraConfig, get_peft_model

    from ssu.engine.encoding import collate

    model = get_peft_model(model, LoraConfig(r=32, lora_alpha=32, lora_dropout=0.01, task_type="CAUSAL_LM",
                                             target_modules=TARGETS))

    def padded_loss(encs) -> tuple[torch.Tensor, int]:
        batch = collate([e.ids for e in encs], [e.n_prompt for e in encs], pad_id)
        pad = PAD_TO - batch["input_ids"].shape[1]
        ids = F.pad(batch["input_ids"], (0, pad), value=pad_id).to(device)
        att = F.pad(batch["attention_mask"], (0, pad), value=0).to(device)
        labels = F.pad(batch["labels"], (0, pad), value=-100).to(device)
        logits = model(input_ids=ids, attention_mask=att).logits[:, :-1].float()
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), labels[:, 1:].reshape(-1), ignore_index=-100)
        return loss, ids.numel()

    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr)
    order = list(range(len(fs.learn)))
    random.Random(0).shuffle(order)
    tokens = 0
    sync(device)
    t0 = time.perf_counter()
    for it, b in enumerate(range(0, len(order), BATCH)):
        idx = order[b : b + BATCH]
        l1, n1 = padded_loss([fs.learn[i] for i in idx])
        l2, n2 = padded_loss([e for i in idx for e in fs.random[i]])
        loss, tokens = l1 + EPSILON * l2, tokens + n1 + n2
        loss.backward(retain_graph=True)
        grads = torch.cat([p.grad.reshape(-1) for p in params])  # the reference concatenates every gradient
        a = grads.abs()
        gamma = a.mean() + a.std()
        for p in params:
            p.grad.mul_((p.grad.abs() >= gamma).to(p.grad.dtype))
        del grads, a
        loss.backward()  # the second backward adds the unmasked gradient back
        if (it + 1) % ACCUM == 0:
            opt.step()
            opt.zero_grad(set_to_none=True)
    sync(device)
    return {"train_s": time.perf_counter() - t0, "tokens": tokens}


def ours(model, fs, pad_id: int, device: torch.device, cfg) -> dict:
    from dataclasses import replace

    from ssu.engine.finetune import finetune
    from ssu.engine.precision import autocast_forward
    from ssu.recipes.components import build_method
    from ssu.recipes.step import trainable

    if cfg.train.finetune == "full" and model.dtype != torch.float32:  # master weights, as ssu step does
        model = autocast_forward(model.float(), model.dtype)
    model = trainable(model, cfg)
    sync(device)
    result = finetune(model, build_method(cfg), fs, replace(cfg.train, epochs=1))
    sync(device)
    return {"train_s": result.seconds, "tokens": result.tokens}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", choices=sorted(SHAPES), default="small")
    ap.add_argument("--device", default="auto", help="auto, cuda or cpu")
    ap.add_argument("--finetune", choices=["lora", "full"], default="lora")
    ap.add_argument("--windows", type=int, default=65)
    ap.add_argument("--books", default=None, help="books directory with time_step_1/ (default: $SSU_GUTENBERG or "
                    "../shared/data/gutenberg), or 'synthetic'")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                    help="run-config override for ours, e.g. train.windows_per_backward=2")
    ap.add_argument("--only", choices=["ours", "reference"], default=None)
    ap.add_argument("--json", default=None, help="also write the figures to this file")
    args = ap.parse_args()

    from ssu.config import parse_set
    from ssu.engine.forget_set import build_forget_set
    from ssu.models.tiny import train_tokenizer
    from ssu.recipes.init import device_defaults, resolve_config
    from ssu.recipes.step import step_windows

    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32  # ssu's `dtype: auto`
    sets = parse_set(args.sets)
    cfg = resolve_config({"train": {"finetune": args.finetune, "lr": 1e-5, "epochs": 1, "batch_size": BATCH,
                                    "grad_accum": ACCUM, "lora": {"r": 32, "alpha": 32, "target_modules": TARGETS}},
                          "method": {"name": "ssu", "args": {"epsilon": EPSILON, "k_random": K}},
                          "device": device.type, "seed": 1}, sets)
    given = {k.split(".")[1] for k, _ in sets if k.startswith("train.")}
    chosen = device_defaults(cfg, given)  # what `ssu init` would write for this device
    work = Path(tempfile.mkdtemp(prefix="ssu-gpu-step-"))
    prepared = prepare(work, args.windows, args.books)
    from data_prep import load_books

    tokenizer = train_tokenizer(list(load_books(prepared)["text"]), vocab_size=8192)
    fs = build_forget_set(1, step_windows(prepared, 1)[1], tokenizer, k_random=K, seed=1, max_length=PAD_TO)
    n_params = None
    peak = matmul_peak(device)
    print(f"device {device} ({torch.cuda.get_device_name() if device.type == 'cuda' else 'CPU'}), "
          f"shape {args.shape}, {args.finetune}, {len(fs.learn)} windows; measured bf16 matmul peak "
          f"{peak / 1e12:.1f} TFLOP/s; ours: {cfg.train.finetune}, share_prompts={cfg.train.share_prompts}, "
          f"windows_per_backward={cfg.train.windows_per_backward}, tokens_per_backward={cfg.train.tokens_per_backward}"
          f"{' (device defaults: ' + str(chosen['settings']) + ')' if chosen['settings'] else ''}")
    rows = []
    for name in ("reference", "ours"):
        if args.only and name != args.only:
            continue
        if name == "reference" and args.finetune == "full":
            print("reference: the public loop is LoRA only; timing ours alone for the full fine-tune")
            continue
        model = build(args.shape, device, dtype, tokenizer)
        n_params = sum(p.numel() for p in model.parameters())
        reset_peak(device)
        out = (reference(model, fs, tokenizer.pad_token_id, device, 1e-5) if name == "reference"
               else ours(model, fs, tokenizer.pad_token_id, device, cfg))
        flops = (6 if args.finetune == "full" and name == "ours" else 4) * n_params * out["tokens"]
        rows.append({"variant": name, **out, "peak_gb": peak_gb(device), "tokens_per_s": out["tokens"] / out["train_s"],
                     "peak_fraction": flops / out["train_s"] / peak, "parameters": n_params})
        del model
        reset_peak(device)
    mem = "peak GPU GB" if device.type == "cuda" else "peak RSS GB"
    print(f"{'variant':<10} {'train s':>8} {mem:>12} {'tokens/s':>10} {'of peak':>8}")
    for r in rows:
        print(f"{r['variant']:<10} {r['train_s']:>8.2f} {r['peak_gb']:>12.2f} {r['tokens_per_s']:>10.0f} "
              f"{100 * r['peak_fraction']:>7.1f}%")
    if len(rows) == 2:
        o, ref = rows[1], rows[0]
        print(f"ours / reference: train time {o['train_s'] / ref['train_s']:.2f}, "
              f"peak memory {o['peak_gb'] / ref['peak_gb']:.2f}"
              + ("  (CPU: peak RSS of the whole process, cumulative)" if device.type != "cuda" else ""))
    if args.json:
        Path(args.json).write_text(json.dumps({"shape": args.shape, "device": str(device), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
