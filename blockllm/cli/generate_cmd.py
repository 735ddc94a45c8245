"""`blockllm generate MODEL PROMPT`: one completion, printed alone on stdout."""

from __future__ import annotations

import click

from blockllm.cli import user_errors


@click.command()
@click.argument("model")
@click.argument("prompt")
@click.option("--max-tokens", default=64, show_default=True, type=click.IntRange(1, 1 << 20),
              help="New tokens at most.")
@click.option("--temperature", default=0.0, show_default=True, type=click.FloatRange(0.0),
              help="0 is greedy.")
@click.option("--top-p", default=1.0, show_default=True, type=click.FloatRange(0.0, 1.0,
              min_open=True))
@click.option("--top-k", default=0, show_default=True, type=click.IntRange(0))
@click.option("--seed", default=None, type=int, help="Seed for sampling.")
@click.option("--chat", is_flag=True, help="Wrap PROMPT as a user turn with the chat template.")
@click.option("--zoo", "zoo_dir", default=None, type=click.Path(file_okay=False),
              help="Zoo directory (default $BLOCKLLM_ZOO or ~/.cache/blockllm/zoo).")
@user_errors
def generate(model, prompt, max_tokens, temperature, top_p, top_k, seed, chat, zoo_dir):
    """Complete PROMPT with MODEL (a zoo name; `embedded` needs no zoo)."""
    from blockllm.errors import UserError
    from blockllm.models.sampling import SamplingParams
    from blockllm.zoo.ingest import resolve_model

    runner, tok = resolve_model(model, zoo_dir)
    if chat:
        if getattr(tok, "chat_template", None) is None and not hasattr(tok, "apply_chat_template"):
            raise UserError(f"{model} has no chat template; drop --chat")
        ids = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=True,
                                      add_generation_prompt=True)
        ids = list(ids["input_ids"] if hasattr(ids, "keys") else ids)
    else:
        ids = tok.encode(prompt)
    params = SamplingParams(temperature=temperature, top_p=top_p, top_k=top_k, seed=seed)
    out = runner.generate([ids], max_tokens, params)[0]
    eos = set(runner.cfg.eos_token_ids)
    click.echo(tok.decode([t for t in out if t not in eos], skip_special_tokens=True))
