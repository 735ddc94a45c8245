"""`blockllm zoo ...`: add, list, show, verify, remove and collect blocks; make variants."""

from __future__ import annotations

import click

from blockllm.cli import user_errors
from blockllm.units import fmt_bytes

zoo_option = click.option("--zoo", "zoo_dir", default=None, type=click.Path(file_okay=False),
                          help="Zoo directory (default $BLOCKLLM_ZOO or ~/.cache/blockllm/zoo).")


def _open(zoo_dir):
    from blockllm.zoo.store import Zoo
    return Zoo(zoo_dir)


@click.group()
def zoo() -> None:
    """The offline block zoo: each distinct block stored once."""


@zoo.command()
@click.argument("source")
@click.option("--name", required=True, help="Name of the model in the zoo.")
@click.option("--base", default=None, help="For a LoRA adapter dir: the zoo model it modifies.")
@click.option("--layers-per-block", default=1, show_default=True, type=click.IntRange(1),
              help="Decoder layers per block (1 shares the most).")
@click.option("--dtype", default="float32", show_default=True,
              type=click.Choice(["float32", "bfloat16", "float16"]))
@zoo_option
@user_errors
def add(source, name, base, layers_per_block, dtype, zoo_dir):
    """Add SOURCE (HF dir, .gguf, dummy:PRESET, embedded, or a LoRA dir with --base)."""
    import torch

    from blockllm.zoo.ingest import add as add_model
    z = _open(zoo_dir)
    new = add_model(z, source, name, base, layers_per_block, getattr(torch, dtype))
    chain = z.chain(name)
    click.echo(f"added {name}: {len(chain)} blocks in its chain, {len(new)} new to the zoo")
    _print_totals(z)


@zoo.command(name="ls")
@zoo_option
@user_errors
def ls(zoo_dir):
    """List models with their chain length and bytes."""
    z = _open(zoo_dir)
    from blockllm.zoo.report import model_bytes
    for name in z.models():
        mb = model_bytes(z, name)
        click.echo(f"{name:24s} blocks={mb.n_blocks:3d} total={fmt_bytes(mb.total):>10s} "
                   f"unique={fmt_bytes(mb.unique):>10s} origin={z.model(name).origin}")
    _print_totals(z)


@zoo.command()
@click.argument("name")
@zoo_option
@user_errors
def show(name, zoo_dir):
    """A model's chain: each block, its bytes and how many models share it."""
    from blockllm.zoo.report import chain_table, model_bytes
    z = _open(zoo_dir)
    row = z.model(name)
    click.echo(f"{name}  origin={row.origin}  layers/block={row.layers_per_block}  meta={row.meta}")
    for line in chain_table(z, name):
        click.echo(line)
    mb = model_bytes(z, name)
    click.echo(f"total {fmt_bytes(mb.total)}: shared with other models {fmt_bytes(mb.shared)}, "
               f"unique to {name} {fmt_bytes(mb.unique)}")
    from blockllm.zoo.evidence import budget, load_options
    options = load_options(z, name)
    if not options:
        click.echo("no measured substitutions (run `blockllm zoo equivalence`)")
        return
    b = budget(z, name)
    click.echo(f"measured chains (budget {b:g} points of task score):")
    for o in options:
        ok = "allowed" if o.drop_points <= b else "over budget"
        click.echo(f"  {o.label:24s} score {o.score:6.1f} drop {o.drop_points:+6.1f} "
                   f"ppl {o.perplexity:7.2f} saves {fmt_bytes(o.saved_bytes):>10s}  {ok}")


@zoo.command()
@click.argument("name")
@click.option("--name", "new_name", required=True, help="Name of the merged model.")
@zoo_option
@user_errors
def merge(name, new_name, zoo_dir):
    """Fold NAME's LoRA adapters into its decoder blocks, stored as a new model."""
    from blockllm.zoo.ingest import merge_adapter
    z = _open(zoo_dir)
    new = merge_adapter(z, name, new_name)
    click.echo(f"merged {name} into {new_name}: {len(new)} new decoder blocks")
    _print_totals(z)


@zoo.command()
@click.argument("name")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="New (or empty) directory to write.")
@click.option("--merge", is_flag=True,
              help="A LoRA model as one whole model (adapter folded in), not base + adapter.")
@zoo_option
@user_errors
def export(name, out, merge, zoo_dir):
    """Write NAME as an HF directory (config, safetensors, tokenizer) for transformers/vLLM."""
    from blockllm.zoo.export import export_dir
    e = export_dir(_open(zoo_dir), name, out, merge)
    click.echo(f"exported {name} to {e.model_dir}" +
               (f", its peft adapter to {e.adapter_dir}" if e.adapter_dir else ""))


@zoo.command()
@zoo_option
@user_errors
def verify(zoo_dir):
    """Re-hash every block; exit 1 naming each corrupted block and the models that use it."""
    z = _open(zoo_dir)
    problems = z.verify()
    for p in problems:
        click.echo(p, err=True)
    if problems:
        raise click.ClickException(f"{len(problems)} problem(s) found")
    click.echo(f"ok: {z.stats().distinct_blocks} blocks verified")


@zoo.command()
@click.argument("name")
@zoo_option
@user_errors
def rm(name, zoo_dir):
    """Remove a model from the manifest (its blocks stay until `zoo gc`)."""
    z = _open(zoo_dir)
    z.remove_model(name)
    click.echo(f"removed {name}; run `blockllm zoo gc` to delete blocks no model uses")


@zoo.command()
@zoo_option
@user_errors
def gc(zoo_dir):
    """Delete blocks that no model's chain uses."""
    z = _open(zoo_dir)
    n, freed = z.gc()
    click.echo(f"deleted {n} blocks, {fmt_bytes(freed)}")
    _print_totals(z)


def _print_totals(z) -> None:
    s = z.stats()
    bound = s.unique_bytes
    over = (s.disk_bytes / bound - 1) * 100 if bound else 0.0
    click.echo(f"zoo {z.root}: {s.models} models, {s.distinct_blocks} distinct blocks; "
               f"unique-bytes bound {fmt_bytes(bound)}, on disk {fmt_bytes(s.disk_bytes)} "
               f"({over:+.2f}%), stored whole {fmt_bytes(s.logical_bytes)}")


def _register() -> None:
    from blockllm.cli.equivalence_cmd import budget, equivalence
    from blockllm.cli.variants_cmd import make_variants
    zoo.add_command(make_variants)
    zoo.add_command(equivalence)
    zoo.add_command(budget)


_register()
