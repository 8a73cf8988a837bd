"""``covseg models``: what is registered, the shipped models in a table that fits 80 columns, and
``covseg models show NAME`` for one model's whole card."""

from __future__ import annotations

import json
from typing import Any

import typer

app = typer.Typer(help="Registered parts, and the trained models shipped with covseg.", invoke_without_command=True)


@app.callback()
def list_models(
    ctx: typer.Context,
    pretrained: bool = typer.Option(False, "--pretrained", help="List the trained models shipped with covseg (the zoo)."),
) -> None:
    """List everything registered (models, encoders, losses, trainers, inferers, input adapters, samplers,
    layouts), or with --pretrained the shipped trained models, usable by name: ``covseg predict --model NAME``;
    ``covseg models show NAME`` prints one model's card."""
    if ctx.invoked_subcommand is not None:
        return
    from rich.console import Console

    console = Console()
    if pretrained:
        _list_pretrained(console)
    else:
        _list_registered(console)


@app.command("show")
def show(name: str = typer.Argument(..., help="A shipped model's name (covseg models --pretrained).")) -> None:
    """The whole model card of a shipped model: task, data, recipe, held-out numbers, training cost."""
    from rich.console import Console
    from rich.markup import escape

    from covseg import zoo
    from covseg.errors import ConfigError

    if zoo.resolve(name) is None:
        raise ConfigError(f"{name}: no shipped model has this name; shipped: {', '.join(zoo.names()) or 'none'}")
    console = Console()
    for key, value in zoo.card(name).items():
        console.print(f"[bold]{escape(key)}[/]")
        text = value if isinstance(value, str) else json.dumps(value, indent=2, ensure_ascii=False)
        console.print(escape(text), soft_wrap=False, overflow="fold")


def _list_registered(console) -> None:
    from rich.markup import escape
    from rich.table import Table

    from covseg.builtins import load_all
    from covseg.registry import REGISTRIES

    load_all()
    for kind, registry in REGISTRIES.items():
        if not len(registry):
            continue
        table = Table(title=f"{kind}es" if kind.endswith("s") else f"{kind}s")
        table.add_column("name")
        table.add_column("description")
        for name, desc in registry.describe().items():
            table.add_row(escape(name), escape(desc))
        console.print(table)


def headline(card: dict[str, Any]) -> str:
    """A card's first held-out number and how it was measured, short enough for one table cell."""
    v = card.get("validation", {})
    keys = [("dice_at_0.5", "Dice"), ("ground_glass_dice", "GGO Dice")]
    numbers = [f"{label} {v[k]:.3f}" for k, label in keys if isinstance(v.get(k), (int, float))]
    if isinstance(v.get("consolidation_dice"), (int, float)):
        numbers.append(f"consol. {v['consolidation_dice']:.3f}")
    if v.get("folds"):
        how = f"{v['folds']}-fold CV"
    elif v.get("cases"):
        how = f"{v['cases']:,} held out"
    else:
        how = "not measured"
    return ", ".join(numbers) + f" ({how})" if numbers else how


def _list_pretrained(console) -> None:
    from rich.markup import escape
    from rich.table import Table

    from covseg import zoo

    names = zoo.names()
    if not names:
        console.print("no trained models are shipped with this installation")
        return
    table = Table(title="shipped models: covseg predict --model NAME", title_justify="left", box=None, pad_edge=False)
    table.add_column("name", no_wrap=True)
    table.add_column("data", no_wrap=True)
    table.add_column("held-out accuracy of its recipe", overflow="fold")
    table.add_column("MiB", justify="right", no_wrap=True)
    for name in names:
        card = zoo.card(name)
        size = sum(f.stat().st_size for f in (zoo.ZOO_DIR / name).iterdir() if f.is_file()) / 2**20
        table.add_row(escape(name), escape(str(card.get("modality", "?"))), escape(headline(card)), f"{size:.1f}")
    console.print(table)
    console.print("The whole card, with the recipe, the data and the training cost: covseg models show NAME")
