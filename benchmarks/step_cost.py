"""Benchmark: what one time step costs, and whether it grows with the stack.

Builds a synthetic corpus of equal-size books (one per step), prepares 100 + 100-word
windows, makes the 5M-parameter reference-size Llama (``tiny-model --arch llama --size
base``) and memorizes it for a few epochs (memorization quality does not matter for
cost). Then, in a fresh subprocess per variant, runs steps 1..N with a full and a LoRA
fine-tune and prints per-step wall time (train and total), the bytes the step stores
relative to a full checkpoint, the ratio time(step N) / time(step 1) (target: within
15 %, i.e. the stack does not make later steps slower) and the peak RSS.

``--reference-config`` adds a comparison with the public reference's per-iteration
work on the same model and the same windows: every sequence padded to 400 tokens,
8 sequences per iteration (batch 2 x (1 + K=3)) in two forwards, two backward passes
per iteration (the second adds the unmasked gradient back), the saliency threshold over
one concatenation of all gradients, LoRA r=32 on every linear projection. Ours runs the
same windows with its own defaults (LoRA r=32, rows padded to the longest, each
prompt forwarded once for its 1 + K rows, one window per forward + single backward, so
only one window's activations are held at a time); ``--packed`` adds "ours" with
``train.share_prompts=false`` (every row a full sequence). Each variant runs in its
own subprocess so ``ru_maxrss`` is its own peak. That peak includes Python, torch and
the loaded model, so the table also shows the RSS right before training and the peak
during training alone (the peak is reset at the start of training through
``/proc/self/clear_refs``; "train +MB" = training peak - RSS before training).

    python benchmarks/step_cost.py                      # cost table, 3 steps
    python benchmarks/step_cost.py --reference-config   # + comparison with the reference's loop
    python benchmarks/step_cost.py --reference-config --repeats 3 --threads 1   # steadier on a busy machine
    python benchmarks/step_cost.py --reference-config --packed   # + ours without prompt sharing
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MAX_LEN_REFERENCE = 400
TRAIN = {"epochs": 1, "batch_size": 2, "grad_accum": 2}  # the reference's schedule, both fine-tunes


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def status_mb(field: str) -> float | None:
    """``VmRSS`` (now) or ``VmHWM`` (peak since start or the last reset) of this process, in MB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


class TrainMemory:
    """The RSS right before training, then the peak RSS of the training alone."""

    def start(self) -> None:
        self.peak_before = peak_rss_mb()
        self.rss_before = status_mb("VmRSS")
        try:  # "5" resets the peak RSS to the current RSS (Linux >= 4.0)
            Path("/proc/self/clear_refs").write_text("5")
            self.reset = True
        except OSError:
            self.reset = False

    def result(self) -> dict:
        train_peak = status_mb("VmHWM") if self.reset else None
        net = train_peak - self.rss_before if train_peak is not None and self.rss_before is not None else None
        return {"peak_rss_mb": max(self.peak_before, peak_rss_mb()), "rss_before_train_mb": self.rss_before,
                "train_peak_mb": train_peak, "train_net_mb": net}


# --- setup (parent) -------------------------------------------------------------------


def build_world(work: Path, n_books: int, words: int, mem_epochs: int) -> dict:
    from data_prep import prepare_books, write_synthetic_corpus
    from ssu.models.tiny import make_tiny_model
    from ssu.recipes.memorize import MemorizeConfig, memorize

    if (work / "memorized" / "memorize.json").is_file():
        return json.loads((work / "memorized" / "memorize.json").read_text())
    write_synthetic_corpus(work / "corpus", n_books=n_books, seed=0, words_per_book=words,
                           n_retain=0, n_heldout=0, overwrite=True)
    prepare_books(work / "corpus", work / "prepared", prompt_words=100, continuation_words=100, overwrite=True)
    make_tiny_model(work / "prepared", work / "tiny", arch="llama", size="base", overwrite=True)
    return memorize(str(work / "tiny"), work / "prepared", work / "memorized",
                    MemorizeConfig(epochs=mem_epochs, eval_windows=1, eval_every=mem_epochs, device="cpu"),
                    overwrite=True, progress=False)


def run_worker(work: Path, variant: str, steps: int, threads: int | None) -> dict:
    cmd = [sys.executable, __file__, "--worker", variant, "--work-dir", str(work), "--steps", str(steps)]
    if threads:
        cmd += ["--threads", str(threads)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def median_of(runs: list[dict]) -> dict:
    """One result per variant: the median of each timing over repeats, the largest peak RSS."""
    med = statistics.median
    out = dict(runs[0], peak_rss_mb=max(r["peak_rss_mb"] for r in runs), repeats=len(runs))
    for k in ("rss_before_train_mb", "train_peak_mb", "train_net_mb"):
        if all(r.get(k) is not None for r in runs):
            out[k] = (med if k == "rss_before_train_mb" else max)([r[k] for r in runs])
    if "steps" in out:
        out["steps"] = [dict(s, **{k: med([r["steps"][i][k] for r in runs]) for k in ("train_s", "load_s", "total_s")})
                        for i, s in enumerate(runs[0]["steps"])]
    else:
        out.update({k: med([r[k] for r in runs]) for k in ("train_s", "total_s")})
    return out


# --- workers (one subprocess each) ---------------------------------------------------------


def _warm_up(work: Path, finetune: str = "full") -> None:
    """Run a 2-window fine-tune once, so step 1 is not charged for first-use costs
    (imports, kernel and allocator warm-up, peft wrapping) that later steps never pay."""
    from dataclasses import replace

    import torch

    from ssu.engine.finetune import finetune as run_finetune
    from ssu.engine.forget_set import build_forget_set
    from ssu.models.loading import load_model, load_tokenizer
    from ssu.recipes.components import build_method
    from ssu.recipes.init import resolve_config
    from ssu.recipes.step import step_windows, trainable

    cfg = resolve_config({"train": {"finetune": finetune}})
    tok = load_tokenizer(str(work / "memorized"))
    model = trainable(load_model(str(work / "memorized"), "cpu"), cfg)
    method = build_method(cfg)
    windows = step_windows(work / "prepared", 1)[1][:2]
    fs = build_forget_set(1, windows, tok, k_random=method.args.k_random)
    run_finetune(model, method, fs, replace(cfg.train, lr=1e-4, epochs=1, batch_size=2, grad_accum=1))  # as run_step
    del model
    torch.manual_seed(0)


def worker_steps(work: Path, variant: str, steps: int) -> dict:
    from ssu.recipes.init import init_run
    from ssu.recipes.step import run_step

    _warm_up(work, variant)
    run = Path(tempfile.mkdtemp(prefix=f"run-{variant}-", dir=work)) / "run"
    init_run(run, {"model": str(work / "memorized"), "data": str(work / "prepared"), "device": "cpu",
                   "train": {"finetune": variant, **TRAIN}, "eval": {"enabled": False}})
    rows = []
    for t in range(1, steps + 1):
        t0 = time.perf_counter()
        e = run_step(run, t, progress=False)
        rows.append({"step": t, "books": e["books"], "windows": e["n_windows"],
                     "train_s": e["timings"]["train_seconds"], "load_s": e["timings"]["load_seconds"],
                     "total_s": time.perf_counter() - t0,
                     "bytes": e["artifacts"]["vector.safetensors"]["bytes"]})
    return {"variant": variant, "steps": rows, "peak_rss_mb": peak_rss_mb()}


def worker_ours_r32(work: Path, variant: str = "ours") -> dict:
    """Our step 1 with LoRA r=32 on all linear layers (the defaults), timed like the reference.

    ``ours-packed``: the same with ``train.share_prompts=false``.
    """
    import ssu.recipes.step
    from ssu.recipes.init import init_run
    from ssu.recipes.step import run_step

    _warm_up(work, "lora")
    run = Path(tempfile.mkdtemp(prefix="run-ours-", dir=work)) / "run"
    train = {"finetune": "lora", **TRAIN, **({"share_prompts": False} if variant == "ours-packed" else {})}
    init_run(run, {"model": str(work / "memorized"), "data": str(work / "prepared"), "device": "cpu",
                   "train": train, "eval": {"enabled": False}})
    mem, finetune = TrainMemory(), ssu.recipes.step.finetune

    def measured_finetune(*args, **kwargs):
        mem.start()
        return finetune(*args, **kwargs)

    ssu.recipes.step.finetune = measured_finetune
    t0 = time.perf_counter()
    e = run_step(run, 1, progress=False)
    return {"variant": variant, "train_s": e["timings"]["train_seconds"], "total_s": time.perf_counter() - t0,
            "windows": e["n_windows"], **mem.result()}


def worker_reference(work: Path) -> dict:
    """The public reference's per-iteration work on step 1's windows (see the module docstring)."""
    import random

    import torch
    import torch.nn.functional as F
    from peft import LoraConfig, get_peft_model

    from ssu.engine.encoding import collate, encode_pair
    from ssu.engine.forget_set import random_label_partners
    from ssu.models.loading import load_model, load_tokenizer

    _warm_up(work, "lora")
    from data_prep import load_schedule, read_window_rows

    t0 = time.perf_counter()
    tok = load_tokenizer(str(work / "memorized"))
    model = load_model(str(work / "memorized"), "cpu")
    books = load_schedule(work / "prepared")["steps"][1]
    windows = [w for w in read_window_rows(work / "prepared") if w["book"] in books]
    model = get_peft_model(model, LoraConfig(
        r=32, lora_alpha=32, lora_dropout=0.01, task_type="CAUSAL_LM",
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
    partners = random_label_partners([w["book"] for w in windows], 3, seed=0)
    learn = [encode_pair(tok, w["prompt"], w["continuation"], MAX_LEN_REFERENCE) for w in windows]
    rand = [[encode_pair(tok, w["prompt"], windows[j]["continuation"], MAX_LEN_REFERENCE) for j in js]
            for w, js in zip(windows, partners)]

    def padded_loss(encs) -> torch.Tensor:
        # Pad to the fixed max length, as the reference's tokenizer(padding="max_length") does.
        batch = collate([e.ids for e in encs], [e.n_prompt for e in encs], tok.pad_token_id)
        width = batch["input_ids"].shape[1]
        pad = MAX_LEN_REFERENCE - width
        ids = F.pad(batch["input_ids"], (0, pad), value=tok.pad_token_id)
        att = F.pad(batch["attention_mask"], (0, pad), value=0)
        labels = F.pad(batch["labels"], (0, pad), value=-100)
        logits = model(input_ids=ids, attention_mask=att).logits[:, :-1].float()
        return F.cross_entropy(logits.reshape(-1, logits.size(-1)), labels[:, 1:].reshape(-1), ignore_index=-100)

    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3)
    order = list(range(len(windows)))
    random.Random(0).shuffle(order)
    mem = TrainMemory()
    mem.start()
    t_train = time.perf_counter()
    for it, b in enumerate(range(0, len(order), TRAIN["batch_size"])):
        idx = order[b : b + TRAIN["batch_size"]]
        loss = padded_loss([learn[i] for i in idx]) + 0.5 * padded_loss([e for i in idx for e in rand[i]])
        loss.backward(retain_graph=True)  # first backward
        grads = torch.cat([p.grad.reshape(-1) for p in params])  # the reference concatenates every gradient
        a = grads.abs()
        gamma = a.mean() + a.std()
        for p in params:
            p.grad.mul_((p.grad.abs() >= gamma).float())
        del grads, a
        loss.backward()  # second backward: adds the unmasked gradient back (g * (1 + m))
        if (it + 1) % TRAIN["grad_accum"] == 0:
            opt.step()
            opt.zero_grad(set_to_none=True)
    train_s = time.perf_counter() - t_train
    return {"variant": "reference", "train_s": train_s, "total_s": time.perf_counter() - t0,
            "windows": len(windows), **mem.result()}


# --- report ---------------------------------------------------------------------------


def print_cost_table(results: list[dict], checkpoint_bytes: int) -> None:
    print(f"\nper-step cost (full checkpoint = {checkpoint_bytes / 1e6:.2f} MB)")
    head = f"{'fine-tune':<9} {'step':>4} {'book':<10} {'windows':>7} {'train s':>8} {'load s':>7} " \
           f"{'total s':>8} {'stored':>10} {'% ckpt':>7}"
    print(head)
    print("-" * len(head))
    for r in results:
        for s in r["steps"]:
            print(f"{r['variant']:<9} {s['step']:>4} {','.join(s['books']):<10} {s['windows']:>7} "
                  f"{s['train_s']:>8.2f} {s['load_s']:>7.2f} {s['total_s']:>8.2f} {s['bytes']:>10,} "
                  f"{100 * s['bytes'] / checkpoint_bytes:>6.1f}%")
    print()
    for r in results:
        first, last = r["steps"][0], r["steps"][-1]
        n = last["step"]
        tr = last["train_s"] / first["train_s"]
        tt = last["total_s"] / first["total_s"]
        ok = "within" if abs(tt - 1) <= 0.15 else "OUTSIDE"
        print(f"{r['variant']:<5} time(step {n}) / time(step 1): train {tr:.2f}, total {tt:.2f} "
              f"({ok} the 15 % target); peak RSS {r['peak_rss_mb']:.0f} MB")


def print_reference_table(ours: list[dict], ref: dict) -> None:
    def mb(r: dict, k: str) -> str:
        return f"{r[k]:.0f}" if r.get(k) is not None else "n/a"

    def ratio(a: dict, k: str) -> str:
        return f"{a[k] / ref[k]:.2f}" if a.get(k) is not None and ref.get(k) else "n/a"

    print(f"\nstep 1 ({ours[0]['windows']} windows), LoRA r=32 on all linear projections, same model")
    head = (f"{'variant':<12} {'train s':>8} {'total s':>8} {'peak RSS MB':>12} {'pre-train MB':>13} "
            f"{'train peak MB':>14} {'train +MB':>10}")
    print(head)
    print("-" * len(head))
    for r in (*ours, ref):
        print(f"{r['variant']:<12} {r['train_s']:>8.2f} {r['total_s']:>8.2f} {mb(r, 'peak_rss_mb'):>12} "
              f"{mb(r, 'rss_before_train_mb'):>13} {mb(r, 'train_peak_mb'):>14} {mb(r, 'train_net_mb'):>10}")
    for o in ours:
        print(f"{o['variant']} / reference: train time {o['train_s'] / ref['train_s']:.2f}, "
              f"peak RSS {ratio(o, 'peak_rss_mb')} (training peak {ratio(o, 'train_peak_mb')}, "
              f"training +MB {ratio(o, 'train_net_mb')})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--words-per-book", type=int, default=2000, help="2000 words = 10 windows of 100 + 100")
    ap.add_argument("--memorize-epochs", type=int, default=3)
    ap.add_argument("--reference-config", action="store_true", help="also time the reference's per-iteration work")
    ap.add_argument("--repeats", type=int, default=1, help="run each variant N times; report medians")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads per worker (default: torch's choice); 1 steadies timings on a busy machine")
    ap.add_argument("--packed", action="store_true",
                    help="with --reference-config: also run ours with train.share_prompts=false")
    ap.add_argument("--work-dir", default=None, help="reused if it already holds a memorized model")
    ap.add_argument("--worker", choices=["full", "lora", "ours", "ours-packed", "reference"], help=argparse.SUPPRESS)
    args = ap.parse_args()

    work = Path(args.work_dir or tempfile.mkdtemp(prefix="ssu-step-cost-"))
    if args.worker:
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        if args.worker in ("full", "lora"):
            out = worker_steps(work, args.worker, args.steps)
        else:
            out = worker_reference(work) if args.worker == "reference" else worker_ours_r32(work, args.worker)
        print(json.dumps(out))
        return

    reused = (work / "memorized" / "memorize.json").is_file()
    record = build_world(work, args.steps, args.words_per_book, args.memorize_epochs)
    ckpt = sum(f.stat().st_size for f in (work / "memorized").glob("*.safetensors"))
    card = json.loads((work / "memorized" / "ssu_model.json").read_text())
    print(f"model: llama/base, {card['parameters']:,} parameters; {args.steps} books x {args.words_per_book} words "
          f"({record['n_windows']} windows of 100 + 100 words); memorized {record['epochs_run']} epochs "
          f"in {record['seconds']:.0f}s{' (reused)' if reused else ''}; train: {TRAIN}; work dir {work}")
    import torch

    print(f"torch threads per worker: {args.threads or torch.get_num_threads()}; "
          f"repeats: {args.repeats} (medians shown), variants interleaved")
    ours = ("ours", "ours-packed") if args.packed else ("ours",)
    variants = ("full", "lora") + ((*ours, "reference") if args.reference_config else ())
    runs: dict[str, list[dict]] = {v: [] for v in variants}
    for _ in range(args.repeats):  # interleaved, so load from other processes hits every variant alike
        for v in variants:
            runs[v].append(run_worker(work, v, args.steps if v in ("full", "lora") else 1, args.threads))
    print_cost_table([median_of(runs["full"]), median_of(runs["lora"])], ckpt)
    if args.reference_config:
        print_reference_table([median_of(runs[v]) for v in ours], median_of(runs["reference"]))


if __name__ == "__main__":
    main()
