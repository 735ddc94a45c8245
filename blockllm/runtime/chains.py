"""Which chain serves a request: the model's own, or an equivalent one (adaptive assembly).

With `EngineConfig.use_equivalence` each model may be served by the chains the zoo's
evidence allows within its quality budget (`zoo.evidence`); each request gets the chain
that costs least now (`zoo.assembly.assemble`): blocks resident on some device, or needed by
the other served models anyway, cost nothing extra to load, and busy blocks cost queueing.
"""

from __future__ import annotations

from blockllm.zoo.partition import ChainEntry


def load_options(engine) -> dict[str, list[tuple]]:
    """model -> [(label, chain, drop points)] of the chains allowed within its budget."""
    from blockllm.zoo.evidence import budget
    from blockllm.zoo.evidence import load_options as options_of
    out = {}
    for m in engine.models:
        b = budget(engine.zoo, m)
        out[m] = [(o.label, o.chain, o.drop_points) for o in options_of(engine.zoo, m)
                  if o.drop_points <= b]
        for _, chain, _ in out[m]:
            engine.register(chain)
    return out


def assemble_chain(engine, model: str) -> tuple[ChainEntry, ...]:
    """The chain a new request of `model` runs."""
    if not engine.options.get(model):
        return engine.chains[model]
    from blockllm.zoo.assembly import assemble, chain_blocks
    others = set().union(*(chain_blocks(c) for m, c in engine.chains.items() if m != model))
    resident = frozenset(k.block for r in engine.weights.memory for k in r.keys()) | others
    load: dict = {}
    for k, q in engine.sched.queues.items():  # a block's queue: summed over its replicas (and copies)
        load[k.block] = load.get(k.block, 0.0) + len(q)
    sizes = {b: r.nbytes for b, r in engine.info.items()}
    opts = [("exact", engine.chains[model], 0.0)] + [
        o for o in engine.options[model] if o[0] != "exact"]
    return assemble(opts, float("inf"), resident, load, sizes).chain
