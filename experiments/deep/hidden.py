"""Is a removed book gone, or behind a branch point? Teacher-forced readings of its audit windows.

Greedy ROUGE-L reads what the model emits from the prompt: one early token off the book and the
rest of the continuation follows the model's own text. Under teacher forcing -- the book's true
prefix at every position -- the model shows what it still holds: the share of the continuation's
tokens it ranks first (top-1) and the median log-odds of the book's token against the best other
candidate (the margin; > 0 where it is still the argmax). A book that scores like the retrain
reference greedily but stays top-1 under teacher forcing is hidden, not removed: a few steps that
restore the branch tokens bring the rest back (the ``relearn`` probe). The share here is pooled
over the windows' tokens, with the margin beside it, for runs made before the ``teacher`` probe
(ssu/eval/probes/teacher.py: the same share per window) joined run.py's evaluation.

Per run and step: the book removed at that step on its audit windows (the windows calibration
never read), at θ_t and, for the same windows, at the memorized model and at the step's retrain
reference (``RUN/../retrain/step_T/model`` when present); beside them the relearning gap (the
``relearn`` probe's score at θ_t minus the retrain reference's, from the runs' results) and, over
every row printed with both, the Spearman correlation of the top-1 share with that gap.

    python experiments/deep/hidden.py onpolicy-generic1-capped --roots runs/deep/demo/seed0 runs/deep/demo/seed1 \
        --steps 1 2 3
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch


@torch.no_grad()
def readings(model, tokenizer, windows: list[dict], max_length: int) -> tuple[float, float]:
    """(top-1 share, median margin) over the continuation tokens of ``windows``, teacher-forced."""
    from ssu.engine.encoding import encode_pair

    top1, margins = [], []
    for w in windows:
        e = encode_pair(tokenizer, w["prompt"], w["continuation"], max_length)
        logits = model(input_ids=torch.tensor([e.ids])).logits[0, e.n_prompt - 1 : -1].float()
        label = torch.tensor(e.ids[e.n_prompt :]).unsqueeze(-1)
        gap = logits.gather(-1, label).squeeze(-1) - logits.scatter(-1, label, float("-inf")).amax(-1)
        top1 += (gap > 0).tolist()
        margins += gap.tolist()
    return sum(top1) / len(top1), statistics.median(margins)


def relearned(results: Path, step: int) -> float | None:
    """The removed book's mean ``probe:relearn`` score at ``step`` in a results.jsonl, if any."""
    if not results.is_file():
        return None
    vals = [r["value"] for r in map(json.loads, results.read_text().splitlines())
            if r["step"] == step and r["metric"] == "probe:relearn" and r["set"] == "removed-now"]
    return sum(vals) / len(vals) if vals else None


def main() -> None:
    from ssu.models.loading import load_model, load_tokenizer
    from ssu.recipes.eval_windows import evaluation_windows, load_model_for
    from ssu.recipes.run_dir import RunDir

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("variants", nargs="+")
    ap.add_argument("--roots", type=Path, nargs="+", required=True, help="seed directories (run.py --out .../seedN)")
    ap.add_argument("--steps", type=int, nargs="+", default=[1])
    args = ap.parse_args()
    missing = [str(r) for r in args.roots if not r.is_dir()]
    if missing:
        raise SystemExit(f"hidden.py: no such seed directory: {', '.join(missing)}")
    from scipy.stats import spearmanr

    print("| seed | variant | step | windows | top-1: memorized | top-1: θ_t | top-1: retrain | "
          "margin: memorized | margin: θ_t | margin: retrain | relearning gap |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    pairs = []
    for root, name in ((r, v) for r in args.roots for v in args.variants):
        if not (root / name).is_dir():
            continue  # a variant not run on this seed
        run = RunDir(root / name)
        tokenizer = load_tokenizer(run.config.model)
        for t in args.steps:
            if t not in run.completed_steps():
                continue
            wins = [w for w in evaluation_windows(run, t) if w["set"] == "removed-now"]
            models = {"memorized": load_model_for(run, 0), "θ_t": load_model_for(run, t)}
            reference = root / "retrain" / f"step_{t}"
            if (reference / "model").is_dir():
                models["retrain"] = load_model(str(reference / "model"))
            got = {k: readings(m.eval(), tokenizer, wins, run.config.train.max_length) for k, m in models.items()}
            cells = [f"{got[k][i]:.2f}" if k in got else "—" for i in (0, 1) for k in ("memorized", "θ_t", "retrain")]
            mine, ref = relearned(run.path / "results.jsonl", t), relearned(reference / "eval" / "results.jsonl", t)
            gap = None if mine is None or ref is None else mine - ref
            if gap is not None:
                pairs.append((got["θ_t"][0], gap))
            cells.append("—" if gap is None else f"{gap:+.2f}")
            print(f"| {root.name} | {name} | {t} | {len(wins)} | " + " | ".join(cells) + " |", flush=True)
    if len(pairs) >= 3:
        rho = spearmanr([a for a, _ in pairs], [b for _, b in pairs])
        print(f"\nSpearman correlation of the top-1 share at θ_t with the relearning gap: {rho.statistic:.2f} "
              f"over {len(pairs)} rows (p {rho.pvalue:.1g})")


if __name__ == "__main__":
    main()
