"""`blockllm zoo equivalence` and `blockllm zoo budget`."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import click

from blockllm.cli import user_errors
from blockllm.units import fmt_bytes


def _stitch(text: str) -> tuple[str, str, int]:
    try:
        model, donor, cut = text.split(":")
        return model, donor, int(cut)
    except ValueError as e:
        raise click.BadParameter("use MODEL:DONOR:CUT, e.g. smollm2-arith-full:smollm2:16") from e


@click.command()
@click.option("--models", default=None, help="Comma-separated zoo models (default: all).")
@click.option("--threshold", "thresholds", multiple=True, type=click.FloatRange(0, min_open=True),
              help="Equivalence threshold on mean relative L2 (repeatable; default a sweep).")
@click.option("--n-eval", default=50, show_default=True, type=click.IntRange(1),
              help="Held-out task examples per measured chain.")
@click.option("--stitch", "stitches", multiple=True,
              help="MODEL:DONOR:CUT: also measure DONOR's bottom + a stitch + MODEL's top.")
@click.option("--results", default="results", show_default=True, type=click.Path(file_okay=False))
@click.option("--zoo", "zoo_dir", default=None, type=click.Path(file_okay=False))
@user_errors
def equivalence(models, thresholds, n_eval, stitches, results, zoo_dir):
    """Find equivalent blocks, measure assembled chains end to end, store the evidence."""
    from blockllm.zoo.pipeline import run_equivalence
    from blockllm.zoo.store import Zoo
    from blockllm.zoo.substitution import THRESHOLDS

    z = Zoo(zoo_dir)
    names = [m.strip() for m in models.split(",")] if models else None
    out = run_equivalence(z, names, tuple(sorted(thresholds)) or THRESHOLDS, n_eval,
                          [_stitch(s) for s in stitches])
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    Path(results).mkdir(parents=True, exist_ok=True)
    path = Path(results) / "equivalence.json"
    path.write_text(json.dumps({"command": "blockllm zoo equivalence", "commit": commit,
                                "zoo": str(z.root), **out}, indent=1))
    click.echo(f"{'model':26s} {'option':18s} {'score':>6s} {'drop':>6s} {'ppl':>7s} "
               f"{'saved':>10s} subst  ok")
    for r in out["rows"]:
        click.echo(f"{r['model']:26s} {r['label']:18s} {r['score']:6.1f} {r['drop_points']:6.1f} "
                   f"{r['perplexity']:7.2f} {fmt_bytes(r['saved_bytes']):>10s} "
                   f"{r['substituted']:5d} {'yes' if r['within_budget'] else 'NO'}")
    for s in out["stitch"]:
        click.echo(f"stitch {s['donor']}[:{s['cut']}] + {s['model']}: exact {s['exact_score']:.1f}"
                   f", swap {s['swap_score']:.1f}, stitched {s['stitched_score']:.1f} "
                   f"(fit error {s['stitch_fit_rel_err']:.3f})")
    click.echo(f"wrote {path}")


@click.command()
@click.argument("name")
@click.argument("points", type=float)
@click.option("--zoo", "zoo_dir", default=None, type=click.Path(file_okay=False))
@user_errors
def budget(name, points, zoo_dir):
    """Set NAME's accuracy budget: the task-score drop (points) it may be served with."""
    from blockllm.zoo.evidence import set_budget
    from blockllm.zoo.store import Zoo
    set_budget(Zoo(zoo_dir), name, points)
    click.echo(f"{name}: budget {points:g} points")
