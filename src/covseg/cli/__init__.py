"""The ``covseg`` command line (typer + rich). Heavy imports happen inside commands."""
