"""Removal as deep as never having seen the book: every recipe variant on one world, over seeds.

For each seed and variant: a run directory ``OUT/seed<N>/<variant>`` made by ``init_run`` /
``run_step`` / ``evaluate_step`` (steps 1..N, each evaluated: greedy ROUGE-L on audit
windows, the worst case over shifted prompts, 8 samples, 8/4-bit and bf16 weights, and
relearning), and with ``--retrain`` the retrain reference of every step
(``OUT/seed<N>/retrain/step_T``; where the seeds share one memorized model, each reference is
trained once and evaluated per seed). ``table.py`` turns them into the goal table and the
frontier plot. Re-runnable: completed steps, evaluations and references are skipped.

    python experiments/deep/run.py demo --out runs/deep/demo --seeds 0 1 2 --retrain
    python experiments/deep/run.py gutenberg --out runs/deep/gutenberg --seeds 0 \\
        --model runs/gutenberg/memorized --data runs/gutenberg/prepared --variants ssu-deep deep-no-kl
    python experiments/deep/run.py pretrained --out runs/deep/pretrained --seeds 0 1 \\
        --model runs/pretrained_world/memorized --data runs/pretrained_world/prepared

The demo world of each seed is built as ``ssu demo`` builds it (experiments/stable/demo_world.py).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "stable"))
sys.path.insert(0, str(HERE))

from variants import GENERIC_DIR, MAIN, VARIANTS  # noqa: E402

from ssu.eval.probes.relearn import GRID  # noqa: E402

STEPS = {"demo": 3, "demo-long": 3, "demo-small": 3, "demo-base": 3, "gutenberg": 6, "pretrained": 4}
# demo-long: the demo world with books 3x as long; demo-small / demo-base: with the "small" / "base" GPT-2 (3.3x / 5.6x
# the demo model's weights)
WORDS = {"demo-long": 3000}
SIZE = {"demo-small": "small", "demo-base": "base"}
# the small GPT-2 at the card's lr 3e-3 reached ROUGE-L 0.28-0.37 in 100 epochs (loss 0.35); at 1e-3 its loss after
# 25 epochs was 1.59 against 2.95 (6e-3: 3.35)
MEMORIZE = {"demo-small": {"lr": 1.0e-3, "epochs": 200}, "demo-base": {"lr": 1.0e-3, "epochs": 200}}
# The pretrained world's card (experiments/pretrained_world/pretrain.py before it wrote
# recommended_unlearn) gives no unlearning advice, so `ssu init` would take the 7B reference's
# lr 1e-5 x 1 epoch; its own recipe (experiments/pretrained_world) is lr 1e-3 x 3 epochs.
TRAIN = {"pretrained": {"lr": 1.0e-3, "epochs": 3}}


# the relearning attacker's learning rates: per step the one that brings the removed books back furthest
# (relearn.lrs, the probe's default grid). One rate, 1e-3, wiped out books that the pretrained world's model still held
# (greedy 0.73 -> 0.14) and the Gutenberg retrain references' text (0.00 at step 6), which reads as removal
# (experiments/deep/relearn_grid.py re-probes runs made before the grid)
RELEARN = {"steps": 6, "lrs": list(GRID), "batch_size": 2}


def eval_block(lm_eval: dict | None) -> dict:
    """The evaluation every run and reference gets: audit-window greedy, the default probes,
    relearning (6 AdamW steps on a quarter of each removed book's audit windows, at the best of
    the probe's grid of rates) and the teacher-forced top-1 share (``teacher``; runs made before it:
    experiments/deep/hidden.py)."""
    metrics = ["perplexity"] + ([{"name": "lm_eval", "args": lm_eval}] if lm_eval else [])
    return {"metrics": ["rougeL_f", "verbatim_8gram"], "model_metrics": metrics,
            "probes": ["shifted", "sampled", "quantized", "rounded", {"name": "relearn", "args": RELEARN}, "teacher"],
            "probe_sets": ["removed-now", "removed-earlier", "heldout"]}


def run_variant(out: Path, name: str, model: str, data: str, seed: int, steps: int, common: dict,
                generic_dir: str | None = None) -> Path:
    from ssu.config import merge
    from ssu.recipes.evaluate import evaluate_step
    from ssu.recipes.init import init_run
    from ssu.recipes.step import run_step

    method, over = VARIANTS[name]
    run = out / name
    if not (run / "config.json").exists():
        cfg = merge(copy.deepcopy(common), {"model": model, "data": data, "seed": seed, "device": "cpu"})
        method_args = (over.get("method") or {}).get("args")
        cfg = merge(cfg, {k: v for k, v in over.items() if k != "method"})
        if cfg.get("generic", {}).get("dir") == GENERIC_DIR:
            if not generic_dir:
                raise SystemExit(f"error: variant {name} needs --generic-dir")
            cfg["generic"]["dir"] = str(Path(generic_dir).resolve())
        cfg["method"] = {"name": method, "args": method_args} if method_args else method
        init_run(run, cfg)
    evaluate_step(run, 0, progress=False)
    for t in range(1, steps + 1):
        run_step(run, t, progress=False)
        evaluate_step(run, t, progress=False)
    return run


def shared_reference(out: Path, root: Path, step: int, model: str) -> None:
    """Copy another seed's retrained model of ``step`` into ``root`` when it came from the same
    recipe: the retrained model depends on the memorization recipe alone (its own seed, recorded
    in memorize.json), not on the run seed, so the worlds that share one memorized model
    (Gutenberg, pretrained) train each reference once; only its evaluation is per seed. Worlds
    built per seed (demo) differ in their source model and are never shared. Copied to a
    temporary name and renamed: absent or complete."""
    import shutil

    from ssu.recipes.memorize import load_record

    dest = root / "retrain" / f"step_{step}" / "model"
    if dest.exists():
        return
    recipe = {k: load_record(model).get(k) for k in ("source_model", "config")}
    for record_path in sorted(out.glob(f"seed*/retrain/step_{step}/model/memorize.json")):
        if {k: load_record(record_path.parent).get(k) for k in recipe} == recipe:
            tmp = dest.with_name("model.partial")
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(record_path.parent, tmp)
            tmp.rename(dest)
            return


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("world", choices=sorted(STEPS))
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--variants", nargs="*", default=MAIN, choices=sorted(VARIANTS),
                    help="default: all; none (the bare flag) with --retrain: the references alone")
    ap.add_argument("--model", help="the memorized model (gutenberg, pretrained)")
    ap.add_argument("--data", help="the prepared directory (gutenberg, pretrained)")
    ap.add_argument("--steps", type=int, help="steps to run (default: the world's)")
    ap.add_argument("--generic-dir", help="general text (a folder of .txt) for the variants that take it")
    ap.add_argument("--retrain", action="store_true", help="also the retrain reference of every step")
    ap.add_argument("--lm-eval-include", help="an lm-eval task folder with ssu_cloze (default: the shipped one, "
                                              "demo world only)")
    args = ap.parse_args()
    steps = args.steps or STEPS[args.world]
    include = args.lm_eval_include or (str(HERE.parent / "lm_eval") if args.world.startswith("demo") else None)
    lm_eval = {"tasks": ["ssu_cloze"], "include": include} if include else None
    common = {"train": {"finetune": "full", **TRAIN.get(args.world, {})}, "eval": eval_block(lm_eval)}
    t0 = time.perf_counter()
    for seed in args.seeds:
        root = args.out / f"seed{seed}"
        if args.world.startswith("demo"):
            from demo_world import world

            prepared, memorized = world(root / "world", seed, WORDS.get(args.world, 1000),
                                        SIZE.get(args.world, "tiny"), MEMORIZE.get(args.world))
            model, data = str(memorized.resolve()), str(prepared.resolve())
        else:
            model, data = str(Path(args.model).resolve()), str(Path(args.data).resolve())
        for name in args.variants:
            started = time.perf_counter()
            run = run_variant(root, name, model, data, seed, steps, common, args.generic_dir)
            alphas = [round(e["alpha"], 2) for _, e in sorted(json.loads((run / "manifest.json").read_text())
                                                               ["steps"].items(), key=lambda kv: int(kv[0]))]
            print(f"[{time.perf_counter() - t0:6.0f}s] seed {seed} {name}: {time.perf_counter() - started:.0f}s, "
                  f"alphas {alphas}", flush=True)
        if args.retrain:
            from ssu.recipes.retrain import retrain

            for t in range(1, steps + 1):
                started = time.perf_counter()
                shared_reference(args.out, root, t, model)
                retrain(model, data, root / "retrain" / f"step_{t}", t,
                        run_overrides={**common, "seed": seed, "device": "cpu"}, progress=False)
                print(f"[{time.perf_counter() - t0:6.0f}s] seed {seed} retrain step {t}: "
                      f"{time.perf_counter() - started:.0f}s", flush=True)


if __name__ == "__main__":
    main()
