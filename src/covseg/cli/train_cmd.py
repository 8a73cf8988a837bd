"""``covseg train`` and ``covseg models``."""

from __future__ import annotations

from pathlib import Path

import typer


def train(
    config: str = typer.Option(..., "--config", "-c", help="YAML config file, or the name of a shipped config."),
    overrides: list[str] = typer.Argument(None, help="Overrides like train.epochs=3 model.params.base=16."),
    output: Path = typer.Option(None, "--output", "-o", help="Run folder (default runs/<name>[_fold<k>])."),
    fold: int = typer.Option(None, "--fold", help="Cross-validation fold to hold out (sets data.fold)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --output from checkpoints/last.pt."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars or epoch lines."),
    device: str = typer.Option(None, "--device", help="auto, cpu, cuda, cuda:N or mps (default: the config's runtime.device)."),
    amp: str = typer.Option(None, "--amp", help="Mixed precision off, bf16 or fp16 (default: the config's runtime.amp)."),
    prompt_type: str = typer.Option(
        None, "--prompt-type", help="Train with this prompt type of CRIS-style prompts (P0..Pn; sets data.prompt)."
    ),
) -> None:
    """Train a model from a YAML config; the run folder is enough to predict later.

    ``torchrun --nproc_per_node N -m covseg train ...`` trains the same run on N processes (DDP).
    """
    from covseg.api import train as run_train
    from covseg.cli._batch import console, user_text
    from covseg.engine.runtime import torchrun_env

    overrides = list(overrides or [])
    if prompt_type:
        overrides.append(f"data.prompt={prompt_type}")
    summary = run_train(config, output, overrides, fold=fold, resume=resume, quiet=quiet, device=device, amp=amp)
    if torchrun_env()[0] > 0:
        return
    console().print(
        f"[bold green]done[/] best {summary['monitor']} {summary['best_metric']:.4f} at epoch "
        f"{summary['best_epoch'] + 1}; run folder {user_text(summary['run_dir'])}"
    )


def list_models(
    pretrained: bool = typer.Option(False, "--pretrained", help="List the trained models shipped with covseg (the zoo) and their cards."),
) -> None:
    """List everything registered (models, encoders, losses, trainers, inferers, input adapters, samplers,
    layouts), or with --pretrained the shipped trained models, usable by name: ``covseg predict --model NAME``."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console()
    if pretrained:
        _list_pretrained(console)
        return
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


def _card_result(card: dict) -> str:
    """The measured held-out numbers of a model card, one line per number."""
    v = card.get("validation", {})
    keys = [("dice_at_0.5", "Dice@0.5"), ("sod_mean_dice", "sod mean Dice"), ("sod_s_measure", "S-measure"), ("sod_mae", "MAE"),
            ("ground_glass_dice", "ground-glass Dice"), ("consolidation_dice", "consolidation Dice")]  # fmt: skip
    lines = [f"{label} {v[k]:.3f}" for k, label in keys if isinstance(v.get(k), (int, float))]
    if "cases" in v:
        how = ""
        if v.get("folds"):
            how = f" ({v['folds']}-fold CV of the recipe)"
        elif v.get("train_cases"):
            how = f" (the recipe trained on {v['train_cases']:,} other images)"
        lines.append(f"on {v['cases']:,} held-out cases{how}")
    return "\n".join(lines)


def _list_pretrained(console) -> None:
    from rich.markup import escape
    from rich.table import Table

    from covseg import zoo

    names = zoo.names()
    if not names:
        console.print("no trained models are shipped with this installation")
        return
    table = Table(title="trained models shipped with covseg (covseg predict --model NAME)", show_lines=True)
    table.add_column("name", no_wrap=True)
    for column in ("task", "data", "recipe", "held-out result", "trained"):
        table.add_column(column, overflow="fold")
    for name in names:
        card = zoo.card(name)
        recipe = card.get("recipe", {})
        size = "×".join(str(s) for s in recipe.get("input_size", []))
        epochs, done = recipe.get("epochs", "?"), recipe.get("epochs_completed")
        epochs_text = f"{done} of {epochs} epochs" if done is not None and done != epochs else f"{epochs} epochs"
        cost = card.get("training", {}).get("cpu_minutes")
        trained = f"{card.get('date', '?')}" + (f"\n{cost} CPU-min" if cost is not None else "")
        table.add_row(
            escape(name), escape(str(card.get("task", ""))), escape(str(card.get("data", ""))),
            escape(f"{recipe.get('model', '?')} {size}, {epochs_text}"),
            escape(_card_result(card)), escape(trained),
        )  # fmt: skip
    console.print(table)
    console.print(escape(str(zoo.card(names[0]).get("status", ""))))
    console.print(f"cards: {escape(str(zoo.ZOO_DIR))}/<name>/card.json")
