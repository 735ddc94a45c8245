"""`blockllm figures`: redraw every paper figure from results/, without rerunning anything."""

from __future__ import annotations

from pathlib import Path

import click

from blockllm.cli import user_errors


@click.command()
@click.option("--results", default="results", show_default=True,
              type=click.Path(file_okay=False, exists=True))
@click.option("--out", default="paper_figures/out", show_default=True,
              type=click.Path(file_okay=False))
@user_errors
def figures(results, out):
    """Draw every figure (PNG and PDF) from the results files under RESULTS."""
    from paper_figures.all import draw_all
    paths = draw_all(Path(results), Path(out), say=click.echo)
    click.echo("\n".join(str(p) for p in paths))
