"""``covseg train``: :func:`covseg.api.train` with the command line's :class:`~covseg.training.options.TrainOptions`."""

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
    from covseg.training.options import TrainOptions

    options = TrainOptions(overrides=list(overrides or []), fold=fold, resume=resume, quiet=quiet, device=device, amp=amp,
                           prompt_type=prompt_type)  # fmt: skip
    summary = run_train(config, output, options)
    if torchrun_env()[0] > 0:
        return
    console().print(
        f"[bold green]done[/] best {summary['monitor']} {summary['best_metric']:.4f} at epoch "
        f"{summary['best_epoch'] + 1}; run folder {user_text(summary['run_dir'])}"
    )
