"""What a floor could read: signals on the pooled windows a recipe sees, against the audit side it never sees.

A step's calibration floors read the books not yet removed on their **pooled** windows (the
calibration side of each book's split, which ``protect`` and ``kl`` also keep); evaluation grades
the same books on their **audit** windows. The pooled windows' greedy ROUGE-L stays at 1.00 while
the audit side falls (experiments/deep/findings/stack-and-floors.md, "What a floor could read"): the
protection keeps exactly the windows the floor reads. This script asks which reading of the pooled
windows -- the ones a recipe may look at -- would have seen the fall.

For every state of a ``reweight_oracle.py`` sweep (the run's stack at an α vector, its audit-side
readings already measured there), it composes the model again and reads, per book not yet
removed, on that step's pooled windows:

- ``greedy``: greedy ROUGE-L from the window's prompt (what ``calibrate.keep`` reads);
- ``greedy_slid``: the same, the prompt read 10, 20 and 30 words later (``keep_offsets`` without 0);
- ``top1``: the share of continuation tokens ranked first under the true prefix (the ``teacher`` probe);
- ``top1_slid``: ``top1`` of the windows read 10, 20 and 30 words later;
- ``logprob``: the mean log-probability of the continuation's tokens;

each divided by its value at θ_0, beside the audit side's greedy ratio of the same book. It prints
each signal's rank correlation with the audit ratio (over every book and state) and, per signal,
the threshold that best separates the states whose worst book's audit ratio is ≥ 0.8 from the rest.

    python experiments/deep/floor_signals.py runs/deep/demo-base/seed0/onpolicy-teacher-hinge4-over-lr3e-4 \\
        --sweep runs/deep/oracle/base-s0-lr3e-4.jsonl --out runs/deep/signals/base-s0-lr3e-4.jsonl
    python experiments/deep/floor_signals.py --summary runs/deep/signals/*.jsonl
    python experiments/deep/floor_signals.py runs/deep/signals/base-s0-lr3e-4.jsonl \
        --simulate runs/deep/oracle/base-s0-lr3e-4.jsonl
    python experiments/deep/floor_signals.py runs/deep/demo-base/seed0/onpolicy-teacher-hinge4-over-lr3e-4 --own

``--summary`` also grades one held-back audit window per book by the book's other two (a ``generic.check``
window's reading, on text the protection never saw); ``--simulate`` replays a calibration that floors on such a
window over the oracle's grid; ``--own`` counts the removed books' flaggable tokens on the audit side.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

SIGNALS = ("greedy", "greedy_slid", "top1", "top1_slid", "logprob")
SLID = (10, 20, 30)


def read(model, tokenizer, pooled: dict[str, list[dict]], max_length: int) -> dict[str, dict[str, float]]:
    """book -> signal -> value on the book's pooled windows (means over windows: :func:`per_window`'s readings, and
    greedy and top-1 from the prompts slid ``SLID`` words)."""
    from ssu.eval.probes.teacher import top1_shares
    from ssu.recipes.targets import slide, window_scores

    out = {}
    for book, ws in pooled.items():
        each = per_window(model, tokenizer, ws, max_length)
        slid = [slide(w, k) for k in SLID for w in ws]
        out[book] = {**{s: float(np.mean([r[s] for r in each])) for s in ("greedy", "top1", "logprob")},
                     "greedy_slid": float(np.mean(window_scores(model, tokenizer, ws, max_length, offsets=SLID))),
                     "top1_slid": float(np.mean(top1_shares(model, tokenizer, slid, max_length)))}
    return out


def per_window(model, tokenizer, windows: list[dict], max_length: int) -> list[dict[str, float]]:
    """greedy ROUGE-L, top-1 share and mean continuation log-probability of each window (``token_logprobs`` scores
    every token after the first; the continuation's are the last ones)."""
    from ssu.engine.encoding import encode_pair
    from ssu.eval.logprobs import token_logprobs
    from ssu.eval.probes.teacher import top1_shares
    from ssu.recipes.targets import window_scores

    n_cont = [len(e.ids) - e.n_prompt for e in (encode_pair(tokenizer, w["prompt"], w["continuation"], max_length)
                                                 for w in windows)]
    lps = token_logprobs(model, tokenizer, windows, max_length)
    greedy = window_scores(model, tokenizer, windows, max_length)
    top1 = top1_shares(model, tokenizer, windows, max_length)
    return [{"greedy": g, "top1": t, "logprob": float(lp[-n:].mean())}
            for g, t, lp, n in zip(greedy, top1, lps, n_cont)]


def audit_side(run, step: int) -> dict[str, list[dict]]:
    """book -> its audit windows, for every book not yet removed after ``step`` (what evaluation grades)."""
    from ssu.recipes.eval_windows import evaluation_windows

    out: dict[str, list[dict]] = {}
    for w in evaluation_windows(run, step):
        if w.get("audit", True) and w["set"] == "future":
            out.setdefault(w["book"], []).append(w)
    return out


def sweep(run_dir: Path, sweep_path: Path, out: Path) -> None:
    from ssu.models.loading import load_tokenizer
    from ssu.recipes.compose import load_composed
    from ssu.recipes.pool import checked, other_windows
    from ssu.recipes.run_dir import RunDir

    run = RunDir(run_dir)
    cfg = run.config
    tokenizer = load_tokenizer(cfg.model, cfg.trust_remote_code)
    steps = sorted(int(s) for s in run.manifest["steps"])
    states = [r for r in map(json.loads, sweep_path.read_text().splitlines()) if r.get("step")]
    done = {(r["step"], tuple(r["alphas"])) for r in map(json.loads, out.read_text().splitlines())} \
        if out.is_file() else set()
    out.parent.mkdir(parents=True, exist_ok=True)
    base_of: dict[int, dict] = {}
    windows_of: dict[int, tuple[dict, dict]] = {}  # step -> (the windows its floors read, the audit side)
    audit0 = states_base(sweep_path)
    for state in states:
        t = state["step"]
        if (t, tuple(state["alphas"])) in done:
            continue
        if t not in windows_of:
            windows_of[t] = (checked(cfg, t, other_windows(cfg, t))[1], audit_side(run, t))
        floors, audit = windows_of[t]
        if t not in base_of:
            model0 = load_composed(run, upto=0, alphas={})
            base_of[t] = {"pooled": read(model0, tokenizer, floors, cfg.train.max_length),
                          "audit": {b: per_window(model0, tokenizer, ws, cfg.train.max_length)
                                    for b, ws in audit.items()}}
        model = load_composed(run, upto=t, alphas=dict(zip(steps, state["alphas"])))
        now = read(model, tokenizer, floors, cfg.train.max_length)
        windows = {b: [{s: ratio(v[s], v0[s], s) for s in v} for v, v0 in
                       zip(per_window(model, tokenizer, ws, cfg.train.max_length), base_of[t]["audit"][b])]
                   for b, ws in audit.items()}
        row = {"step": t, "alphas": state["alphas"], "books": {
            b: {"audit": state["by_book"][f"future:{b}"] / audit0[f"future:{b}"],
                **{s: ratio(now[b][s], base_of[t]["pooled"][b][s], s) for s in SIGNALS}}
            for b in floors if f"future:{b}" in state["by_book"] and audit0.get(f"future:{b}")},
            "audit_windows": windows}
        with out.open("a") as f:
            f.write(json.dumps(row) + "\n")
        worst = min(row["books"].values(), key=lambda v: v["audit"])
        print(f"step {t} α {state['alphas']}: worst audit {worst['audit']:.2f}; its "
              + " ".join(f"{s} {worst[s]:.2f}" for s in SIGNALS), flush=True)


def states_base(sweep_path: Path) -> dict[str, float]:
    return next(r for r in map(json.loads, sweep_path.read_text().splitlines()) if r["alphas"] == [])["by_book"]


def ratio(now: float, base: float, signal: str) -> float:
    """Now over θ_0's value; a log-probability (negative) as exp(now − base), the per-token likelihood ratio."""
    return float(np.exp(now - base)) if signal == "logprob" else (now / base if base else float("nan"))


def summary(paths: list[Path]) -> None:
    """Per sweep and pooled: each signal's Spearman ρ with the audit ratio (book rows), and how well its
    per-state minimum separates states whose worst book stays ≥ 0.8 of memorized on the audit side."""
    from scipy.stats import spearmanr

    sets = {p.stem: [json.loads(line) for line in p.read_text().splitlines() if line] for p in paths}
    if len(sets) > 1:
        sets["all"] = [r for rows in list(sets.values()) for r in rows]
    for name, rows in sets.items():
        books = [v for r in rows for v in r["books"].values()]
        worst = [min(r["books"].values(), key=lambda v: v["audit"]) for r in rows if r["books"]]
        kept = np.array([w["audit"] >= 0.8 for w in worst])
        print(f"{name}: {len(rows)} states, {len(books)} book readings, {int(kept.sum())} states keep every book ≥ 0.8")
        for s in SIGNALS:
            rho = spearmanr([v["audit"] for v in books], [v[s] for v in books]).statistic
            low = np.array([min(v[s] for v in r["books"].values()) for r in rows if r["books"]])
            # the floor on this signal that refuses the most losing states while refusing no state that keeps them
            thr = low[kept].min() if kept.any() else np.inf
            caught = int((low[~kept] < thr).sum())
            print(f"  {s:12s} ρ {rho:+.2f}; per-state minimum {low.min():.2f}-{low.max():.2f}; a floor at "
                  f"{thr:.3f} refuses {caught} of {int((~kept).sum())} losing states and none that keeps them")


def summary_check(paths: list[Path]) -> None:
    """A held-back window as the floor: per state, read window i of every book (i = 0, 1, 2 in turn) and
    grade the state by the same books' other audit windows (greedy, / θ_0). The protection saw neither,
    as a ``generic.check`` window would not be seen."""
    from scipy.stats import spearmanr

    rows = [json.loads(line) for p in paths for line in p.read_text().splitlines() if line]
    rows = [r for r in rows if r.get("audit_windows")]
    for s in ("greedy", "top1", "logprob"):
        xs, ys, states = [], [], []
        for r in rows:
            for i in range(3):
                read_, rest = [], []
                for ws in r["audit_windows"].values():
                    others = [w["greedy"] for j, w in enumerate(ws) if j != i and np.isfinite(w["greedy"])]
                    if i < len(ws) and others and np.isfinite(ws[i][s]):
                        read_.append(ws[i][s])
                        rest.append(float(np.mean(others)))
                        xs.append(ws[i][s])
                        ys.append(rest[-1])
                if read_:
                    states.append((min(read_), min(rest)))
        low, worst = np.array(states).T
        kept = worst >= 0.8
        thr = low[kept].min()
        print(f"held-back {s:8s} ρ {spearmanr(xs, ys).statistic:+.2f} over {len(xs)} book readings; a floor at "
              f"{thr:.3f} refuses {int((low[~kept] < thr).sum())} of {int((~kept).sum())} losing states and none of "
              f"{int(kept.sum())} keeping them; at 0.9: refuses {int((low[~kept] < 0.9).sum())} losing, "
              f"{int((low[kept] < 0.9).sum())} keeping")


def simulate(signal_path: Path, sweep_path: Path) -> None:
    """A calibration that reads one held-back window per book, replayed on the oracle's grid: at every step,
    from the path chosen so far, the largest α of the grid at which every book's window ``i`` keeps ``keep`` ×
    its reading at θ_{t−1} (``prev``) or at θ_0 (``anchored``); a step whose smallest α fails is refused. The path
    is then judged by the oracle's goals (read on all three audit windows, the held-back one among them)."""
    states = {tuple(r["alphas"]): r for r in map(json.loads, signal_path.read_text().splitlines()) if r}
    oracle = {tuple(r["alphas"]): r for r in map(json.loads, sweep_path.read_text().splitlines()) if r.get("goals")}
    grid = sorted({a[0] for a in oracle if len(a) == 1}, reverse=True)
    n_steps = max(len(a) for a in oracle)

    def reading(path: tuple, i: int, s: str) -> dict[str, float]:
        return {b: ws[i][s] for b, ws in states[path]["audit_windows"].items() if i < len(ws)}

    print(f"{signal_path.stem}: grid {grid}; the oracle's own best path(s) in reweight_oracle.py's summary")
    for s in ("logprob", "top1"):
        for anchored in (False, True):
            for keep in (0.8, 0.85, 0.9, 0.95):
                out = []
                for i in range(3):
                    path: tuple = ()
                    for _ in range(n_steps):
                        prev = reading(path, i, s) if path else {}
                        fine = [a for a in grid if all(v >= keep * (1.0 if anchored else prev.get(b, 1.0)) - 1e-9
                                                       for b, v in reading(path + (a,), i, s).items())]
                        if not fine:
                            break
                        path += (fine[0],)
                    if len(path) < n_steps:
                        out.append(f"window {i}: refused at step {len(path) + 1}")
                        continue
                    missed = [f"{k}@{t}" for t in range(1, n_steps + 1)
                              for k, v in oracle[path[:t]]["goals"].items() if v is False]
                    out.append(f"window {i}: {path} {'every goal' if not missed else ', '.join(missed)}")
                print(f"  {s:8s} {'θ_0' if anchored else 'θ_t-1'} × {keep}: " + "; ".join(out))


def own_share(run_dir: Path) -> None:
    """Per step: the share of each audit window (books not yet removed) whose tokens the removed books' flags
    could mark -- a token of a removed book's windows found in no retain or pooled window (``suppress``'s
    ``generic_ngram: 1`` test, step by step with that step's pool)."""
    from data_prep import load_schedule, read_window_rows
    from ssu.models.loading import load_tokenizer
    from ssu.recipes.pool import other_windows
    from ssu.recipes.run_dir import RunDir

    run = RunDir(run_dir)
    cfg = run.config
    tok = load_tokenizer(cfg.model, cfg.trust_remote_code)
    rows, schedule = read_window_rows(cfg.data), load_schedule(cfg.data)["steps"]

    def ids(w: dict) -> list[int]:
        return tok(w["prompt"] + " " + w["continuation"], add_special_tokens=False)["input_ids"]

    retain = {t for w in rows if w["role"] == "retain" for t in ids(w)}
    own: set[int] = set()
    for t in sorted(int(k) for k in run.manifest["steps"]):
        pool = {i for ws in other_windows(cfg, t).values() for w in ws for i in ids(w)}
        own |= {i for w in rows if w["role"] == "forget" and w["book"] in schedule[t] for i in ids(w)} - retain - pool
        cont = [tok(" " + w["continuation"], add_special_tokens=False)["input_ids"]
                for ws in audit_side(run, t).values() for w in ws]
        shares = [float(np.mean([i in own for i in c])) for c in cont]
        print(f"step {t}: {len(own)} flaggable tokens; their share of the {len(shares)} audit windows' continuations "
              f"{min(shares):.3f}-{max(shares):.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("paths", type=Path, nargs="+", help="the run (or, with --summary, the signal files)")
    ap.add_argument("--sweep", type=Path, help="the run's reweight_oracle.py JSON lines")
    ap.add_argument("--out", type=Path, help="JSON lines, one per state")
    ap.add_argument("--summary", action="store_true")
    ap.add_argument("--own", action="store_true", help="with one run: the flaggable tokens' share of the audit side")
    ap.add_argument("--simulate", type=Path, help="with one signal file: replay a held-back floor on this oracle sweep")
    args = ap.parse_args()
    if args.own:
        own_share(args.paths[0])
    elif args.simulate:
        simulate(args.paths[0], args.simulate)
    elif args.summary:
        summary(args.paths)
        summary_check(args.paths)
    elif len(args.paths) != 1 or not args.sweep or not args.out:
        ap.error("a reading takes one run, --sweep and --out")
    else:
        sweep(args.paths[0], args.sweep, args.out)


if __name__ == "__main__":
    main()
