"""``python -m ssu.cli`` (what ``accelerate launch -m ssu.cli`` runs)."""

from ssu.cli import main

main()
