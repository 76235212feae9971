#!/usr/bin/env bash
# Real-book benchmark: six Project Gutenberg books, one removed per time step.
#
#   experiments/gutenberg/run.sh [BOOKS_DIR] [OUT_DIR]
#
# Environment knobs: MAX_WORDS (excerpt per book, default 1000), METHOD (default ssu),
# EXTRA (a directory with retain/*.txt and heldout/*.txt added to the six books: the
# Gutenberg layout has neither, and gd, fisher and the held-out perplexity need them),
# CONFIG (unlearning config, default experiments/gutenberg/config.yaml), ARCH/SIZE of the
# tiny model. Every stage is skipped when its output exists, so the script resumes after a crash.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
books="${1:-$here/../../../shared/data/gutenberg}"
out="${2:-runs/gutenberg}"
max_words="${MAX_WORDS:-1000}"
method="${METHOD:-ssu}"
config="${CONFIG:-$here/config.yaml}"
mkdir -p "$out"
start=$(date +%s)
if [ -n "${EXTRA:-}" ] && [ ! -d "$out/books" ]; then
  # The six books by reference (never copied into the repository), the extra texts beside them.
  mkdir -p "$out/books.tmp"
  for d in "$books"/time_step_*; do ln -s "$(cd "$d" && pwd)" "$out/books.tmp/$(basename "$d")"; done
  for role in retain heldout; do [ -d "$EXTRA/$role" ] && cp -r "$EXTRA/$role" "$out/books.tmp/$role"; done
  mv "$out/books.tmp" "$out/books"
fi
[ -n "${EXTRA:-}" ] && books="$out/books"
[ -d "$out/prepared" ] || ssu prepare "$books" "$out/prepared" --max-words "$max_words"
[ -d "$out/tiny" ] || ssu tiny-model "$out/prepared" "$out/tiny" --arch "${ARCH:-gpt2}" --size "${SIZE:-tiny}"
[ -d "$out/memorized" ] || ssu memorize "$out/tiny" "$out/prepared" "$out/memorized" --target-rouge 0.9 --epochs 200
run="$out/run-$method"
[ -f "$run/config.json" ] || ssu init "$run" --model "$out/memorized" --data "$out/prepared" --method "$method" --config "$config"
ssu eval "$run" 0
steps=$(python -c "import json,sys; print(len(json.load(open(sys.argv[1]))['steps']))" "$out/prepared/schedule.json")
for t in $(seq 1 "$steps"); do
  ssu step "$run" "$t"
done
ssu report "$run"
echo "wall time: $(( $(date +%s) - start )) s"
