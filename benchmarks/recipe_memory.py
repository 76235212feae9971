"""Benchmark: the memory a recipe's components add to a step of plain SSU, per parameter.

Builds a synthetic world (two books to remove, two retain books, one held out; 100 +
100-word windows) and a Llama of ``--size`` (default ``base``, the 5M-parameter reference
shape; random weights: memory does not depend on what the model knows). Two
measurements per component, on a full fine-tune:

- **state** (counted): the tensors the component holds through the step, found by walking
  its attributes after ``prepare`` -- bytes / trainable parameter. For the frozen copy of
  ``kl`` (reference: model) and early stop's copy of the trained weights, the copy's bytes.
- **peak** (measured): in a fresh subprocess per variant, steps 1 and 2's peak RSS
  (``ru_maxrss``) minus plain SSU's, / trainable parameter, the median of ``--repeats`` runs
  -- it includes what a component holds only for a moment (the float32 Fisher
  ``retain-mask`` thresholds) and the activations of the rows a loss term adds (``kl``,
  ``guard``), which grow with rows x tokens x (width + vocabulary), not with parameters.

    python benchmarks/recipe_memory.py                 # table, --size base
    python benchmarks/recipe_memory.py --size large    # a larger shape: peaks steadier
    python benchmarks/recipe_memory.py --only "protect"  # some rows (and plain ssu's)
    python benchmarks/recipe_memory.py --device cuda --size 1b --repeats 1   # on a GPU

On a GPU (``--device cuda``) ``--size 1b`` is the Llama-3.2-1B shape (``gpu_step.py``'s, 128k
vocabulary, random bf16 weights saved once) and the run's ``dtype: auto`` (float32 master weights,
bf16 autocast); the peak is the steps' ``torch.cuda.max_memory_allocated`` -- the tensors alone,
without the allocator's cache or the CUDA context -- and "counted" walks the components on the GPU.
At that shape the rows a loss term adds are a small share of the parameters' bytes, so the peaks
show the per-weight state the small shape's activations hide.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

# name -> (config overrides over plain ssu full, what the docs call it)
VARIANTS = {
    "ssu (plain, full)": {},
    "fisher": {"regularizers": [{"name": "fisher", "args": {"lam": 30.0}}]},
    "retain-mask": {"regularizers": [{"name": "retain-mask", "args": {"fraction": 0.05}}]},
    "ssu-stable regularizers (fisher + retain-mask)": {
        "regularizers": [{"name": "fisher", "args": {"lam": 30.0}},
                         {"name": "retain-mask", "args": {"fraction": 0.05}}]},
    "kl (reference: model)": {"regularizers": [{"name": "kl", "args": {"lam": 10.0}}]},
    "kl (reference: cached)": {"regularizers": [{"name": "kl", "args": {"lam": 10.0, "reference": "cached"}}]},
    "protect": {"regularizers": [{"name": "protect", "args": {"lam": 30.0, "fraction": 0.05}}]},
    "guard": {"regularizers": ["guard"]},
    "logit-margin": {"regularizers": [{"name": "logit-margin", "args": {"lam": 10.0}}]},
    "early stop (calibrate.early_stop)": {"calibrate": {"early_stop": True, "windows": 2}},
    # a method in place of ssu's: what it holds beyond plain ssu (ssu/methods/suppress.py)
    "suppress (reference: model)": {"method": {"name": "suppress", "args": {"reference": "model"}}},
    "suppress (reference: cached)": {"method": "suppress"},
    # on-policy rollouts (experiments/deep's onpolicy-generic1): 4 prompt offsets, greedy, per window; with samples
    "suppress (rollouts, teacher_weight 0)": {"method": {"name": "suppress", "args": {
        "rollout_every": 1, "ngram": 4, "generic_ngram": 1, "rollout_offsets": [0, 10, 20, 30],
        "teacher_weight": 0.0}}},
    "suppress (rollouts + 2 samples each)": {"method": {"name": "suppress", "args": {
        "rollout_every": 1, "ngram": 4, "generic_ngram": 1, "rollout_offsets": [0, 10, 20, 30],
        "rollout_samples": 2, "teacher_weight": 0.0}}},
    "ssu-deep regularizers (protect + kl cached)": {
        "regularizers": [{"name": "protect", "args": {"lam": 30.0, "fraction": 0.05}},
                         {"name": "kl", "args": {"lam": 10.0, "reference": "cached"}}]},
}


def build_world(root: Path, size: str, device: str = "cpu") -> tuple[Path, Path]:
    from data_prep import prepare_books, write_synthetic_corpus
    from ssu.models.tiny import SIZES, make_tiny_model

    corpus, prepared, model = root / "corpus", root / "prepared", root / "model"
    write_synthetic_corpus(corpus, n_books=2, seed=0, words_per_book=1200, n_retain=2, n_heldout=1)
    prepare_books(corpus, prepared)
    if size in SIZES:
        make_tiny_model(prepared, model, arch="llama", size=size)
    else:  # a public model's shape (gpu_step.py's), random weights
        from gpu_step import build

        from data_prep import load_books
        from ssu.models.tiny import train_tokenizer

        tokenizer = train_tokenizer(list(load_books(prepared)["text"]), vocab_size=2048)
        build(size, torch.device(device), torch.bfloat16, tokenizer).save_pretrained(model, safe_serialization=True)
        tokenizer.save_pretrained(model)
    return prepared, model


def tensor_bytes(obj, seen: set | None = None, depth: int = 0) -> int:
    """Bytes of the distinct tensors reachable from ``obj`` through dicts, lists, tuples and attributes."""
    seen = set() if seen is None else seen
    if depth > 4 or id(obj) in seen:
        return 0
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, torch.nn.Module):
        return sum(t.numel() * t.element_size() for t in list(obj.parameters()) + list(obj.buffers()))
    if isinstance(obj, dict):
        return sum(tensor_bytes(v, seen, depth + 1) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(v, seen, depth + 1) for v in obj)
    if hasattr(obj, "__dict__") and depth == 0:
        return sum(tensor_bytes(v, seen, depth + 1) for k, v in vars(obj).items() if k != "args")
    return 0


def counted(prepared: Path, model_dir: Path, name: str, device: str = "cpu") -> float | None:
    """Bytes per trainable parameter the variant's components hold after prepare (counted)."""
    import copy

    from ssu.config import RunConfig, load
    from ssu.engine.alpha import AlphaView
    from ssu.engine.forget_set import build_forget_set
    from ssu.models.loading import load_model, load_tokenizer
    from ssu.recipes.components import build_method, build_regularizers, resolve
    from ssu.recipes.step import step_windows

    cfg = resolve(load(RunConfig, {"model": str(model_dir), "data": str(prepared), "device": device,
                                   "train": {"finetune": "full"}}, VARIANTS[name]))
    model = load_model(str(model_dir), device, "float32").requires_grad_(True)
    n = sum(p.numel() for p in model.parameters() if p.requires_grad)
    tok = load_tokenizer(str(model_dir))
    books, windows, retain, earlier = step_windows(prepared, 2)
    fs = build_forget_set(2, windows, tok, retain=retain, earlier=earlier, books=books, max_length=512)
    total = 0
    method = build_method(cfg)
    method.prepare(model, fs)
    total += tensor_bytes(method)
    if method.needs_reference:  # as below: the step deep-copies the model
        total += tensor_bytes(copy.deepcopy(model))
    for r in build_regularizers(cfg, -1):
        r.prepare(model, fs)
        total += tensor_bytes(r)
        if r.needs_reference:  # the step's frozen θ_{t−1} (a full fine-tune deep-copies the model)
            total += tensor_bytes(copy.deepcopy(model))
        r.finish()
    if cfg.calibrate.early_stop:  # AlphaView(keep_trained=True) copies the trained weights at each check
        snap = {k: p.detach() for k, p in model.named_parameters()}
        total += tensor_bytes(AlphaView(model, snap, snap, keep_trained=True).trained)
    return total / n


def child(prepared: str, model_dir: str, name: str, out: str, device: str, steps: str) -> None:
    """Steps 1..``steps`` of the variant in this process (step 2 has an earlier book: guard's rows);
    prints their peak (bytes) as JSON: the process's peak RSS on the CPU, the peak of allocated
    tensors on a GPU."""
    from ssu.recipes.init import init_run
    from ssu.recipes.step import run_step

    torch.set_num_threads(1)
    over = {"model": model_dir, "data": prepared, "device": device, "eval": {"enabled": False},
            "train": {"finetune": "full", "epochs": 1, "batch_size": 2, "grad_accum": 1}, **VARIANTS[name]}
    init_run(out, over)
    t0 = time.perf_counter()
    for t in range(1, int(steps) + 1):
        run_step(out, t, progress=False)
    peak = (torch.cuda.max_memory_allocated() if device == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    print(json.dumps({"peak": peak, "seconds": time.perf_counter() - t0}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="base", help="a tiny model's size, or 1b / 8b (a GPU's shapes)")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--json", type=Path, default=None, help="also write the rows to this file")
    ap.add_argument("--repeats", type=int, default=3, help="runs per variant; the median peak is shown")
    ap.add_argument("--only", nargs="+", choices=list(VARIANTS), metavar="NAME",
                    help="these rows only (plain ssu is always run: the peaks are relative to it)")
    ap.add_argument("--steps", type=int, default=None, help="steps per run (default: 2, on a GPU 1)")
    ap.add_argument("--child", nargs=6, help=argparse.SUPPRESS)
    args = ap.parse_args()
    names = [n for n in VARIANTS if not args.only or n in args.only or n.startswith("ssu (plain")]
    if args.child:
        child(*args.child)
        return
    # On a GPU one step (at 1B a step writes a 5 GB vector), and the runs go to memory (/dev/shm)
    # where it exists: disk writes dominated there.
    steps = args.steps or (1 if args.device == "cuda" else 2)
    shm = "/dev/shm" if args.device == "cuda" and os.path.isdir("/dev/shm") else None
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=shm) as tmp:
        root = Path(tmp)
        prepared, model_dir = build_world(root, args.size, args.device)
        from transformers import AutoConfig, AutoModelForCausalLM

        with torch.device("meta"):
            n = sum(p.numel() for p in AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_dir))
                    .parameters())
        print(f"model: llama {args.size}, {n / 1e6:.2f}M parameters (float32: {4 * n / 2**20:.1f} MiB), "
              f"{args.device}\n")
        peaks: dict[str, list[int]] = {}
        # glibc returns a freed tensor to the system only if it was mmapped; a fixed, low mmap
        # threshold makes every tensor of the model's size mmapped, so RSS follows live tensors
        # (the default dynamic threshold keeps freed memory in the heap and the peak wanders).
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072", "OMP_NUM_THREADS": "1"}
        for r in range(args.repeats):
            for i, name in enumerate(names):
                out = subprocess.run([sys.executable, __file__, "--child", str(prepared), str(model_dir), name,
                                      str(root / f"run{r}-{i}"), args.device, str(steps)],
                                     capture_output=True, text=True, env=env)
                if out.returncode:
                    raise SystemExit(f"{name}: {(out.stderr.strip().splitlines() or ['failed'])[-1]}")
                peaks.setdefault(name, []).append(json.loads(out.stdout.strip().splitlines()[-1])["peak"])
                shutil.rmtree(root / f"run{r}-{i}")  # a full vector per step: 5 GB each at the 1B shape
                print(f"[{time.perf_counter() - t0:.0f} s] {name}: peak {peaks[name][-1] / 2**30:.2f} GiB",
                      file=sys.stderr, flush=True)
        peaks = {k: statistics.median(v) for k, v in peaks.items()}
        base = peaks["ssu (plain, full)"]
        what = "peak allocated (GPU)" if args.device == "cuda" else "peak RSS"
        print(f"| component | state held (counted), bytes/param | steps' {what} over plain ssu, bytes/param |")
        print("|---|---:|---:|")
        rows = []
        for name in names:
            state = 0.0 if name.startswith("ssu (plain") else counted(prepared, model_dir, name, args.device)
            rows.append({"component": name, "state": state, "peak_over_plain": (peaks[name] - base) / n})
            print(f"| {name} | {state:.2f} | {rows[-1]['peak_over_plain']:+.2f} |")
        print(f"\nplain ssu steps' {what}: {base / 2**20:.0f} MiB")
        if args.json:
            args.json.write_text(json.dumps({"size": args.size, "device": args.device, "parameters": n,
                                             "plain_peak_bytes": base, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
