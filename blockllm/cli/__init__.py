"""The `blockllm` command: one click group. Sub-groups live in their own modules."""

from __future__ import annotations

import functools
import os

# OpenMP threads of torch (libgomp) wait at the end of each parallel region by spinning a while,
# then sleep; a sleeping thread wakes late, and a decode step runs hundreds of small regions.
# Spinning longer (before torch is imported: libgomp reads it once) measured, in process at
# 2 req/s on 2 cores with 5% other load: TPOT p50 149 -> 102 ms (89 ms without the load).
# The setting is this process's own: once torch (and libgomp with it) is loaded it is taken out
# of the environment again, so that processes started from here (Ray actors, servers under
# test, vLLM) do not inherit it: several spinning processes on 2 cores starve one another.
if "GOMP_SPINCOUNT" not in os.environ:
    os.environ["GOMP_SPINCOUNT"] = "100000000"
    import torch  # noqa: F401,E402 - libgomp reads GOMP_SPINCOUNT when it is loaded
    del os.environ["GOMP_SPINCOUNT"]

import click  # noqa: E402

from blockllm.errors import UserError


def user_errors(fn):
    """Print a user error's message (it names the fix) and exit 1, without a traceback."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as e:
            raise click.ClickException(str(e)) from e
    return wrapper


@click.group()
@click.version_option(package_name="blockllm")
def main() -> None:
    """Serve many fine-tuned LLMs through shared blocks (BlockLLM)."""


def _register() -> None:
    from blockllm.cli.bench_cmd import bench
    from blockllm.cli.figures_cmd import figures
    from blockllm.cli.generate_cmd import generate
    from blockllm.cli.serve_cmd import serve
    from blockllm.cli.zoo_cmd import zoo
    main.add_command(zoo)
    main.add_command(generate)
    main.add_command(serve)
    main.add_command(bench)
    main.add_command(figures)


_register()
