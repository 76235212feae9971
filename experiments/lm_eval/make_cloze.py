"""Write an ssu_cloze lm-eval task folder: the task YAML, its loader and items cut from text.

    python experiments/lm_eval/make_cloze.py OUT_DIR --text-dir HELDOUT_DIR [--items 200]
    python experiments/lm_eval/make_cloze.py experiments/lm_eval --synthetic   # the shipped items

``--text-dir``: every ``*.txt`` under it, in sorted order (use text the model never
trained on, e.g. the pretrained world's held-out generic files). ``--synthetic``: a
synthetic book of the demo's language that no corpus of ``ssu synth`` contains.
Then: ``ssu eval RUN T --lm-eval ssu_cloze --lm-eval-include OUT_DIR``.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> None:
    from data_prep.cloze import cloze_items
    from data_prep.synth import synthetic_book
    from ssu.io import atomic_write_text

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--text-dir", type=Path)
    src.add_argument("--synthetic", action="store_true")
    ap.add_argument("--items", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.synthetic:
        text = synthetic_book(args.seed, "cloze", 0, words=12000)
    else:
        files = sorted(args.text_dir.rglob("*.txt"))
        if not files:
            raise SystemExit(f"error: no .txt files under {args.text_dir}")
        text = "\n".join(f.read_text(encoding="utf-8", errors="replace") for f in files)
    items = cloze_items(text, args.items, args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.out.resolve() != HERE:
        for name in ("ssu_cloze.yaml", "utils.py"):
            shutil.copyfile(HERE / name, args.out / name)
    atomic_write_text(args.out / "ssu_cloze.jsonl", "".join(json.dumps(i, sort_keys=True) + "\n" for i in items))
    print(f"{len(items)} items -> {args.out / 'ssu_cloze.jsonl'}")


if __name__ == "__main__":
    main()
