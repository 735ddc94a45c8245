"""Which chain serves a request: the model's own, or an equivalent one (adaptive assembly).

With `EngineConfig.use_equivalence` each model may be served by the chains the zoo's
evidence allows within its quality budget (`zoo.evidence`); each request gets the chain
that costs least now (`zoo.assembly.assemble`): blocks resident on some device, or needed by
the other served models anyway, cost nothing extra to load, and busy blocks cost queueing.
"""

from __future__ import annotations

from blockllm.zoo.partition import ChainEntry


def load_options(engine) -> dict[str, list[tuple]]:
    """model -> [(label, chain, drop points)] of the chains allowed within its budget (with
    use_equivalence); a pinned model's only option is the one it is pinned to."""
    from blockllm.errors import UserError
    from blockllm.zoo.evidence import budget
    from blockllm.zoo.evidence import load_options as options_of
    pinned = dict(engine.cfg.pinned_chains)
    unserved = sorted(set(pinned) - set(engine.models))
    if unserved:
        raise UserError(f"--pin-chain names {', '.join(unserved)}, not served (served: "
                        f"{', '.join(engine.models)}); add it to --models or drop the pin")
    out = {}
    for m in engine.models:
        opts = options_of(engine.zoo, m)
        if m in pinned:
            out[m] = [(o.label, o.chain, o.drop_points) for o in opts if o.label == pinned[m]]
            if not out[m]:
                raise UserError(f"{m} has no chain option {pinned[m]!r} (recorded: "
                                f"{', '.join(o.label for o in opts) or 'none'}; "
                                "`blockllm zoo equivalence` records them)")
        elif engine.cfg.use_equivalence:
            b = budget(engine.zoo, m)
            out[m] = [(o.label, o.chain, o.drop_points) for o in opts if o.drop_points <= b]
        for _, chain, _ in out.get(m, ()):
            engine.register(chain)
    return out


def assemble_chain(engine, model: str) -> tuple[ChainEntry, ...]:
    """The chain a new request of `model` runs."""
    if model in dict(engine.cfg.pinned_chains):
        return engine.options[model][0][1]
    if not engine.options.get(model):
        return engine.chains[model]
    from blockllm.zoo.assembly import assemble, chain_blocks
    others = set().union(*(chain_blocks(c) for m, c in engine.chains.items() if m != model))
    resident = frozenset(k.block for r in engine.weights.memory for k in r.keys()) | others
    load: dict = {}
    for k, q in engine.sched.queues.items():  # summed over its replicas and copies
        load[k.block] = load.get(k.block, 0.0) + len(q)
    sizes = {b: r.nbytes for b, r in engine.info.items()}
    opts = [("exact", engine.chains[model], 0.0)] + [
        o for o in engine.options[model] if o[0] != "exact"]
    return assemble(opts, float("inf"), resident, load, sizes).chain
