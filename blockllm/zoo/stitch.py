"""Stitching: join the bottom of one model's chain to the top of another's with a fitted map.

Where a donor's bottom blocks cannot simply replace a model's (its hidden states drifted, or
its width differs), an affine stitch S(h) = W h + b, fitted by least squares on calibration
hidden states (donor's after the cut -> the model's after the cut), sits between them:

    chain = donor[:cut] + [stitch] + model[cut:]

The stitch is a zoo block like any other (kind "stitch"), and the stitched chain is stored
as a measured chain option of the model, next to the unstitched swap for comparison.
"""

from __future__ import annotations

import torch

from blockllm.zoo.calibration import CalibrationSet
from blockllm.zoo.evidence import ChainOption
from blockllm.zoo.ingest import chain_model
from blockllm.zoo.partition import Block, ChainEntry, make_block
from blockllm.zoo.store import Zoo, ZooError


def fit_stitch(x: torch.Tensor, y: torch.Tensor, ridge: float = 1e-6) -> dict[str, torch.Tensor]:
    """Least squares W, b minimizing |x W^T + b - y|^2 + ridge |W|^2. x: (N, h_in),
    y: (N, h_out)."""
    xd, yd = x.double(), y.double()
    xm, ym = xd.mean(0), yd.mean(0)
    xc, yc = xd - xm, yd - ym
    gram = xc.T @ xc + ridge * xc.shape[0] * torch.eye(xc.shape[1], dtype=torch.float64)
    w = torch.linalg.solve(gram, xc.T @ yc).T  # (h_out, h_in)
    b = ym - w @ xm
    return {"proj.weight": w.to(x.dtype).contiguous(), "proj.bias": b.to(x.dtype).contiguous()}


def _hidden_at(zoo: Zoo, name: str, cut: int, calib: CalibrationSet) -> torch.Tensor:
    """(N, hidden) hidden states entering chain position `cut` of `name`, calibration tokens."""
    runner = chain_model(zoo, name)
    return torch.cat([runner.trace(list(s))[0][cut - 1] for s in calib.sequences])


def stitched_chains(zoo: Zoo, model: str, donor: str, cut: int, calib: CalibrationSet
                    ) -> tuple[tuple[ChainEntry, ...], tuple[ChainEntry, ...], Block, float]:
    """(swap chain, stitched chain, stitch block, calibration rel. error of the stitch)."""
    top, bottom = zoo.chain(model), zoo.chain(donor)
    if not 1 <= cut < len(top) - 1:
        raise ZooError(f"cut must be between 1 and {len(top) - 2} (chain positions)")
    x = _hidden_at(zoo, donor, cut, calib)
    y = _hidden_at(zoo, model, cut, calib)
    tensors = fit_stitch(x, y)
    cfg = zoo.config(model)
    block = make_block("stitch", dict(cfg.block_signature("stitch"), h_in=x.shape[1],
                                      h_out=y.shape[1]), tensors)
    fitted = x @ tensors["proj.weight"].T + tensors["proj.bias"]
    err = float(((fitted - y).norm(dim=-1) / y.norm(dim=-1)).mean())
    swap = tuple(bottom[:cut]) + tuple(top[cut:])
    stitched = tuple(bottom[:cut]) + (ChainEntry(block.id),) + tuple(top[cut:])
    return swap, stitched, block, err


def measure_stitch(zoo: Zoo, model: str, donor: str, cut: int, calib: CalibrationSet,
                   n_eval: int = 50) -> dict:
    """Measure exact, swapped and stitched chains of `model`; store the stitch as an option."""
    from blockllm.zoo import manifest as mf
    from blockllm.zoo.assembly import saved_bytes
    from blockllm.zoo.substitution import measure_chain, other_models_blocks

    swap, stitched, block, err = stitched_chains(zoo, model, donor, cut, calib)
    exact = tuple(zoo.chain(model))
    sizes = {r.id: r.nbytes for r in mf.all_blocks(zoo.con)} | {block.id: block.nbytes}
    others = other_models_blocks(zoo, model)
    rows = {}
    for label, chain in (("exact", exact), ("swap", swap), ("stitched", stitched)):
        score, ppl = measure_chain(zoo, model, chain, n_eval, extra={block.id: block})
        rows[label] = ChainOption(label, chain, score, ppl, 0.0,
                                  saved_bytes(exact, chain, others, sizes), None)
    drop = rows["exact"].score - rows["stitched"].score
    zoo.add_chain_option(model, f"stitch@{cut}:{donor}", list(stitched), [block], {
        "score": rows["stitched"].score, "perplexity": rows["stitched"].perplexity,
        "drop_points": drop, "saved_bytes": rows["stitched"].saved_bytes,
        "calib_hash": calib.hash, "n_eval": n_eval})
    return {"model": model, "donor": donor, "cut": cut, "stitch_fit_rel_err": err,
            "stitch_bytes": block.nbytes,
            **{f"{k}_score": v.score for k, v in rows.items()},
            **{f"{k}_perplexity": v.perplexity for k, v in rows.items()},
            **{f"{k}_saved_bytes": v.saved_bytes for k, v in rows.items()}}
