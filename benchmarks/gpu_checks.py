"""Every GPU measurement the docs name as not yet run, as one command with one markdown table.

    python benchmarks/gpu_checks.py --out $OUT                 # on a GPU: the checks below, ~9 min on one H100/H200
    python benchmarks/gpu_checks.py --out runs/checks --size cpu   # the same checks at CPU size (the test suite)

Checks, in this order -- the most wanted first, so a short budget skips the rest (each a
subprocess with its own time limit; a check that fails or runs out of time is a row saying
so, and the others still run; ``--only NAME ...`` reruns some):

- ``step-1b-lora``, ``step-8b-lora``: ``gpu_step.py`` at the Llama-3.2-1B / 3.1-8B shapes,
  LoRA r = 32, ours against the public reference's loop (time, peak memory, tokens/s,
  share of a measured bf16 matmul peak);
- ``step-1b-full``: ours alone, full fine-tune at the 1B shape (float32 master weights,
  bf16 autocast);
- ``memory-1b``: ``recipe_memory.py`` at the 1B shape -- the peak GPU memory each recipe
  component adds to a step of plain ``ssu``, per parameter (docs/memory.md);
- ``generation-8b``: ``generation.py`` at the 8B shape, batch 32 (first and warm call,
  one at a time, share of the bandwidth bound); ``generation-1b-fp32``: the same at the 1B
  shape in float32 -- is batched decoding identical to one at a time without bf16?;
- ``step-1b-lora-shared``: ours at 1B LoRA with prompt sharing in place of the CUDA
  default (packed rows);
- ``bf16-stack``: two bf16 LoRA steps of ``ssu step`` on a small model, then ``ssu stack
  --rounding bfloat16`` -- how much of each vector a bf16 export keeps;
- ``pretrain-36m``: the pretrained world's GPU size (``gpu36m``) for a short token budget,
  on ``--corpus`` (a ``build_corpus.py`` output) or, without one, on synthetic text
  (throughput is what this checks; perplexity then means little).

``--size cpu`` runs the same checks at the ``small`` shape / tiny models on the CPU in
about four minutes, so the script itself is tested where no GPU is. It writes
``OUT/gpu_checks.md`` and ``OUT/gpu_checks.json``; paste the table into docs/scaling.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

# At CPU size the checks prove the script runs (the test suite), so a check may take as long as a
# busy 2-core machine needs: about 10 s each alone, over 60 s seen with other jobs on the cores.
CPU_LIMIT = 300
# name -> (size -> argv after the script, time limit in seconds)
STEP_GPU = {"1b-lora": ["--shape", "1b", "--windows", "32"],
            "1b-full": ["--shape", "1b", "--windows", "32", "--finetune", "full", "--only", "ours"],
            "8b-lora": ["--shape", "8b", "--windows", "16"],
            # ours with prompt sharing in place of the CUDA default (packed rows): which is faster at 1B
            "1b-lora-shared": ["--shape", "1b", "--windows", "32", "--only", "ours",
                               "--set", "train.share_prompts=true"]}
# At CPU size (the test suite) on a synthetic book: nothing outside the repository is needed.
# Four windows: one optimizer step (batch 2 x accumulation 2) -- the script's path, not a timing.
STEP_CPU = {"1b-lora": ["--shape", "small", "--windows", "4", "--books", "synthetic"],
            "1b-full": ["--shape", "small", "--windows", "4", "--finetune", "full", "--only", "ours",
                        "--books", "synthetic"],
            "8b-lora": ["--shape", "small", "--windows", "4", "--books", "synthetic"],
            "1b-lora-shared": ["--shape", "small", "--windows", "4", "--only", "ours", "--books", "synthetic",
                               "--set", "train.share_prompts=true"]}
# name -> generation.py at GPU size (batch 32, 64 new tokens, 8 prompts one at a time); at CPU size the nano model
GENERATION_GPU = {"8b": ["--shape", "8b", "--dtype", "bfloat16", "--prompts", "64"],
                  # bf16 batched decoding differed from one at a time on random 8B weights (0/8): float32
                  "1b-fp32": ["--shape", "1b", "--dtype", "float32", "--prompts", "32"]}
GENERATION_CPU = ["--size", "nano", "--prompts", "4", "--batch-size", "4", "--new-tokens", "8"]
# The components whose memory docs/memory.md states (the rows of recipe_memory.py; plain ssu's is always run).
MEMORY_ROWS = {"gpu": ["ssu-stable regularizers (fisher + retain-mask)", "protect", "kl (reference: cached)"],
               "cpu": ["protect"]}
ORDER = ["step-1b-lora", "step-1b-full", "memory-1b", "bf16-stack", "generation-8b", "step-8b-lora", "pretrain-36m",
         "generation-1b-fp32", "step-1b-lora-shared"]


def checks(size: str, work: Path, corpus: Path | None) -> list[dict]:
    gpu = size == "gpu"
    device = "cuda" if gpu else "cpu"
    out = []
    for name, argv in (STEP_GPU if gpu else STEP_CPU).items():
        out.append({"name": f"step-{name}", "kind": "step", "limit": 150 if gpu else CPU_LIMIT,
                    "argv": [sys.executable, str(HERE / "gpu_step.py"), "--device", device, *argv,
                             "--json", str(work / f"step-{name}.json")]})
    out.append({"name": "memory-1b", "kind": "memory", "limit": 300 if gpu else CPU_LIMIT,
                "argv": [sys.executable, str(HERE / "recipe_memory.py"), "--device", device,
                         "--size", "1b" if gpu else "nano", "--repeats", "1", "--only", *MEMORY_ROWS[size],
                         "--json", str(work / "memory-1b.json")]})
    for name, argv in GENERATION_GPU.items():
        argv = [*argv, "--batch-size", "32", "--new-tokens", "64", "--single", "8"] if gpu else GENERATION_CPU
        out.append({"name": f"generation-{name}", "kind": "generation", "limit": 150 if gpu else CPU_LIMIT,
                    "argv": [sys.executable, str(HERE / "generation.py"), "--device", device, *argv,
                             "--json", str(work / f"generation-{name}.json")]})
    out.append({"name": "bf16-stack", "kind": "stack", "limit": 120 if gpu else CPU_LIMIT,
                "argv": [sys.executable, __file__, "--worker", "bf16-stack", "--out", str(work), "--size", size]})
    out.append({"name": "pretrain-36m", "kind": "pretrain", "limit": 150 if gpu else CPU_LIMIT,
                "argv": [sys.executable, __file__, "--worker", "pretrain", "--out", str(work), "--size", size]
                + (["--corpus", str(corpus)] if corpus else [])})
    return sorted(out, key=lambda c: ORDER.index(c["name"]))


# --- workers ---------------------------------------------------------------------------------------


def _world(root: Path, books: int = 3, words: int = 400) -> tuple[Path, Path]:
    from data_prep import prepare_books, write_synthetic_corpus
    from ssu.models.tiny import make_tiny_model

    write_synthetic_corpus(root / "corpus", n_books=books, seed=0, words_per_book=words, n_retain=1, n_heldout=1)
    prepare_books(root / "corpus", root / "prepared", prompt_words=40, continuation_words=40)
    make_tiny_model(root / "prepared", root / "model", arch="llama", size="small" if books > 2 else "nano")
    return root / "model", root / "prepared"


def worker_bf16_stack(out: Path, size: str) -> dict:
    """Two bf16 LoRA steps through the CLI, then `ssu stack --rounding bfloat16`."""
    from click.testing import CliRunner

    from ssu.cli import main

    root = Path(tempfile.mkdtemp(prefix="bf16-", dir=out))
    model, prepared = _world(root)
    device = "cuda" if size == "gpu" else "cpu"
    runner = CliRunner()
    run = root / "run"

    def ssu(*args):
        res = runner.invoke(main, [str(a) for a in args])
        if res.exit_code:
            raise SystemExit(f"ssu {' '.join(map(str, args))}: {res.output.strip().splitlines()[-1]}")
        return res.stdout

    ssu("init", run, "--model", model, "--data", prepared, "--set", f"device={device}", "--set", "dtype=bfloat16",
        "--set", "train.finetune=lora", "--set", "train.lr=1e-5", "--set", "train.epochs=2",
        "--set", "train.lora.r=8", "--set", "eval.enabled=false")
    t0 = time.perf_counter()
    for t in (1, 2):
        ssu("step", run, t, "--no-eval")
    steps_s = time.perf_counter() - t0
    table = ssu("stack", run, "--rounding", "bfloat16")
    rows = [line.split() for line in table.splitlines()[1:] if line.strip() and line.split()[0].isdigit()]
    manifest = json.loads((run / "manifest.json").read_text())["steps"]
    return {"steps_s": round(steps_s, 2), "precision": manifest["2"]["precision"],
            "rel_error": [float(r[5]) for r in rows], "unchanged": [float(r[6]) for r in rows], "table": table}


def worker_pretrain(out: Path, size: str, corpus: Path | None) -> dict:
    """The pretrained world's model size for a short token budget; its card gives the figures."""
    if corpus is None:
        from data_prep.synth import synthetic_book

        corpus = Path(tempfile.mkdtemp(prefix="corpus-", dir=out))
        for split, n in (("train", 24 if size == "gpu" else 4), ("heldout", 2)):
            (corpus / split).mkdir()
            for i in range(n):
                (corpus / split / f"doc{i}.txt").write_text(synthetic_book(7, split, i, words=20000))
    model_out = out / "pretrain-model"
    argv = [sys.executable, str(ROOT / "experiments" / "pretrained_world" / "pretrain.py"), str(corpus), str(model_out),
            "--overwrite"]
    argv += (["--size", "gpu36m", "--tokens", "8M", "--batch", "64", "--lr", "1e-3", "--device", "cuda"]
             if size == "gpu" else ["--size", "nano", "--tokens", "60k", "--batch", "8", "--seq", "128",
                                    "--vocab", "1024", "--eval-blocks", "16", "--device", "cpu"])
    subprocess.run(argv, check=True, capture_output=True, text=True)
    card = json.loads((model_out / "ssu_model.json").read_text())
    return {k: card[k] for k in ("size", "parameters", "tokens_trained", "train_seconds", "tokens_per_second",
                                 "heldout_perplexity_init", "heldout_perplexity", "device")}


# --- the table --------------------------------------------------------------------------------------


def summary(check: dict, data: dict) -> str:
    kind = check["kind"]
    if kind == "step":
        cells = []
        for r in data["rows"]:
            cells.append(f"{r['variant']}: {r['train_s']:.1f} s, peak {r['peak_gb']:.1f} GB, "
                         f"{r['tokens_per_s']:,.0f} tok/s, {100 * r['peak_fraction']:.0f} % of matmul peak")
        if len(data["rows"]) == 2:
            o, ref = data["rows"][1], data["rows"][0]
            cells.append(f"ours/reference time {o['train_s'] / ref['train_s']:.2f}, memory "
                         f"{o['peak_gb'] / ref['peak_gb']:.2f}")
        return f"{data['shape']}, {data['rows'][0]['parameters'] / 1e9:.2f}B params; " + "; ".join(cells)
    if kind == "memory":
        cells = [f"{r['component']} {r['peak_over_plain']:+.2f} (state {r['state']:.2f})" for r in data["rows"]
                 if not r["component"].startswith("ssu (plain")]
        return (f"{data['size']}, {data['parameters'] / 1e9:.2f}B params, plain ssu's peak "
                f"{data['plain_peak_bytes'] / 2**30:.1f} GiB; over it, bytes/param: " + "; ".join(cells))
    if kind == "generation":
        return (f"{data['model']}, batch {data['batch_size']}: first {data['first_s']:.1f} s, "
                f"warm {data['warm_s']:.1f} s ({data['warm_tokens_per_s']:,.0f} tok/s, "
                f"{100 * data['bound_fraction']:.0f} % of the bandwidth bound), "
                f"{data['speedup_warm']:.1f}x one at a time, identical {data['identical']}/{data['single_prompts']}")
    if kind == "stack":
        p = data["precision"]
        return (f"2 bf16 LoRA steps at lr 1e-5 in {data['steps_s']:.1f} s (step 2: weights {p['weights']}, compute "
                f"{p['compute']}, stack as {p['stack']}); a bf16 export keeps the vectors with relative error "
                f"{', '.join(f'{e:.3f}' for e in data['rel_error'])} (unchanged entries "
                f"{', '.join(f'{u:.0%}' for u in data['unchanged'])})")
    return (f"{data['size']} ({data['parameters'] / 1e6:.1f}M params): {data['tokens_trained']:,} tokens in "
            f"{data['train_seconds']:.0f} s ({data['tokens_per_second']:,.0f} tok/s); held-out perplexity "
            f"{data['heldout_perplexity_init']:.0f} -> {data['heldout_perplexity']:.1f}")


def environment() -> str:
    import torch

    dev = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)"
    return f"{dev}; torch {torch.__version__}, CUDA {torch.version.cuda}; Python {platform.python_version()}"


def run_all(out: Path, size: str, corpus: Path | None, budget: float, only: list[str] | None = None) -> list[dict]:
    out.mkdir(parents=True, exist_ok=True)
    start, rows = time.perf_counter(), []
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(HERE), os.environ.get("PYTHONPATH", "")])}
    for check in checks(size, out, corpus):
        if only and check["name"] not in only:
            continue
        left = budget - (time.perf_counter() - start)
        limit = min(check["limit"], left)
        row = {"check": check["name"], "seconds": 0.0}
        if limit < 10:
            rows.append({**row, "status": "skipped: out of budget", "result": ""})
            continue
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(check["argv"], capture_output=True, text=True, timeout=limit, env=env)
            ok = proc.returncode == 0
            detail = "" if ok else (proc.stderr.strip().splitlines() or ["failed"])[-1][:300]
        except subprocess.TimeoutExpired as e:  # with the last line it printed, to see how far it got
            said = (e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else e.stderr or "").strip()
            ok, detail = False, f"timed out after {limit:.0f} s" + (f" ({said.splitlines()[-1][:200]})" if said else "")
        row["seconds"] = round(time.perf_counter() - t0, 1)
        data = None
        if ok:
            path = out / f"{check['name']}.json"
            data = json.loads(path.read_text()) if path.is_file() else json.loads(proc.stdout.strip().splitlines()[-1])
        rows.append({**row, "status": "ok" if ok else "failed", "result": summary(check, data) if ok else detail,
                     "data": data})
        print(f"[{time.perf_counter() - start:5.0f}s] {check['name']}: {rows[-1]['status']}: {rows[-1]['result']}",
              flush=True)
        write_table(out, rows, size)  # so far: a run stopped from outside keeps what it measured
    return rows


def write_table(out: Path, rows: list[dict], size: str) -> str:
    lines = [f"GPU checks ({size} size) -- {environment()}; `python benchmarks/gpu_checks.py --size {size}`", "",
             "| check | status | seconds | result |", "|---|---|---:|---|"]
    lines += [f"| {r['check']} | {r['status']} | {r['seconds']:.0f} | {r['result']} |" for r in rows]
    text = "\n".join(lines) + "\n"
    (out / "gpu_checks.md").write_text(text)
    (out / "gpu_checks.json").write_text(json.dumps({"size": size, "environment": environment(), "rows": rows},
                                                    indent=1, default=str))
    return text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--size", choices=["gpu", "cpu"], default=None, help="default: gpu when CUDA is available")
    ap.add_argument("--corpus", type=Path, default=None, help="build_corpus.py output for the pretrain check")
    ap.add_argument("--budget", type=float, default=540.0, help="seconds for all checks together")
    ap.add_argument("--only", nargs="+", choices=ORDER, metavar="CHECK", help="these checks only")
    ap.add_argument("--worker", choices=["bf16-stack", "pretrain"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.size is None:
        import torch

        args.size = "gpu" if torch.cuda.is_available() else "cpu"
    if args.worker == "bf16-stack":
        data = worker_bf16_stack(args.out, args.size)
    elif args.worker == "pretrain":
        data = worker_pretrain(args.out, args.size, args.corpus)
    else:
        print(write_table(args.out, run_all(args.out, args.size, args.corpus, args.budget, args.only), args.size))
        return
    print(json.dumps(data))


if __name__ == "__main__":
    main()
