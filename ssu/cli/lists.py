"""``ssu list KIND``: the registered components of any kind, with their parameters."""

from __future__ import annotations

import click

from ssu.cli.group import main
from ssu.errors import SSUError

KINDS = {"methods": "ssu.methods", "presets": "ssu.presets", "regularizers": "ssu.regularizers",
         "metrics": "ssu.metrics", "eval-sets": "ssu.eval.sets", "model-metrics": "ssu.eval.model_metrics",
         "probes": "ssu.eval.probes"}


def _list_kind(kind: str) -> None:
    import importlib

    from ssu.registry import kinds, unknown_message

    for module in KINDS.values():
        importlib.import_module(module)
    registries = kinds()
    if kind not in registries:
        raise SSUError(unknown_message("kind of component", kind, sorted(registries)))
    for name, text, params in registries[kind].describe():
        click.echo(f"{name:<22} {text}")
        if params:
            click.echo(" " * 23 + "args: " + ", ".join(f"{p}={v!r}" for p, v in params))


@main.command("list")
@click.argument("kind", required=False)
def list_cmd(kind):
    """List the registered components of KIND (methods, presets, regularizers, metrics, eval-sets,
    model-metrics, ...) with their parameters; without KIND, the kinds."""
    from ssu.registry import kinds

    if kind is None:
        import importlib

        for module in KINDS.values():
            importlib.import_module(module)
        for plural, registry in kinds().items():
            click.echo(f"{plural:<16} {len(registry)} {registry.kind}(s)")
        return
    _list_kind(kind)


def _alias(name: str, kind: str) -> None:
    @main.command(name, hidden=True, help=f"Same as `ssu list {kind}`.")
    def _cmd():
        _list_kind(kind)


for _name, _kind in (("methods", "methods"), ("regularizers", "regularizers"), ("eval-sets", "eval-sets"),
                     ("model-metrics", "model-metrics")):
    _alias(_name, _kind)
