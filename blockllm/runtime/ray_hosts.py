"""The Ray backend: one actor per device, each owning a `LocalHost` (its block workers, KV pools
and adapters). The engine stays on the driver and schedules; actors only load, drop and run.

Hidden states go from actor to actor through Ray's object store (shared memory on one node, the
network across nodes): a call returns one object per request, the engine keeps only their
references and passes them to the next block's actor, which fetches them itself; only the
head's token ids (picked on its device) come to the engine. KV never moves while serving: it
stays in the pool of the actor that runs the block. An actor runs its calls in the order
they were sent, so a `drop` or `load` sent before a `run` has happened when the run starts.
While one actor computes, the engine starts batches on the others (`submit` returns at once)
and takes in whichever finishes first (`collect`).

Ray is imported here only: the local backend never needs it.
"""

from __future__ import annotations

import dataclasses
import os

from blockllm.errors import UserError
from blockllm.runtime.hosts import BatchCall, LocalHost
from blockllm.runtime.keys import BlockKey


class _DeviceActor:
    """Runs in the actor's process: a LocalHost on the actor's device."""

    def __init__(self, zoo_root: str, device: str, dtype: str, index: int, threads: int,
                 pack: bool = False, graphs: str = "off"):
        import torch
        if threads:
            torch.set_num_threads(threads)
        self.host = LocalHost(zoo_root, device, dtype, index, pack, graphs)

    def load(self, key, parts, cfg, kv_pages, page_size, wait):
        self.host.load(key, parts, cfg, kv_pages, page_size, wait)

    def drop(self, key):
        self.host.drop(key)

    def profile(self, key):
        return self.host.profile(key)

    def take_pool(self, key):
        taken = self.host.take_pool(key)
        return None if taken is None else (taken[0], taken[1].cpu())

    def put_pool(self, key, layout, kv):
        self.host.put_pool(key, layout, kv)

    def run(self, call: BatchCall):
        """(None, output per request), or (the exception, None per request): one return
        value each, so every output is its own object the next actor can fetch."""
        import ray
        import torch
        refs = [i for i, x in enumerate(call.inputs) if isinstance(x, ray.ObjectRef)]
        n = len(call.inputs)
        try:
            if refs:  # hidden states straight from the actors that computed them
                inputs = list(call.inputs)
                for i, x in zip(refs, ray.get([inputs[i] for i in refs]), strict=True):
                    inputs[i] = x
                call = dataclasses.replace(call, inputs=inputs)
            outs = [o.cpu() if isinstance(o, torch.Tensor) else o  # GPU tensors leave the
                    for o in self.host.run(call)]  # device here; token ids are ints
        except Exception as e:  # noqa: BLE001 - handed back to the engine, which isolates it
            return (e, *([None] * n))
        return (None, *outs)

    def pid(self) -> int:
        return os.getpid()

    def packs(self) -> bool:
        """Whether this actor keeps packed weights: decided on its own CPU."""
        return self.host.packs

    def node(self) -> str:
        """The Ray node this actor runs on: devices on one node share its fast links."""
        import ray
        return ray.get_runtime_context().get_node_id()


class RayHost:
    """The driver's handle on one device actor; the same calls as LocalHost."""

    def __init__(self, actor, index: int, server: str = ""):
        self.actor, self.index, self.server = actor, index, server  # server: its Ray node
        self.packs = False  # as LocalHost.packs, as the actor reports it (ray_hosts)
        self._loaded: set[BlockKey] = set()

    def load(self, key, parts, cfg, kv_pages=0, page_size=16, wait=True) -> None:
        """As LocalHost.load. wait=False returns at once; the actor reads the block on its
        own background thread, and its first run of the block waits for it."""
        import ray
        ref = self.actor.load.remote(key, parts, cfg, kv_pages, page_size, wait)
        if wait:
            try:  # a corrupt block fails here, by name, as it does locally
                ray.get(ref)
            except ray.exceptions.RayTaskError as e:
                raise e.cause if isinstance(e.cause, Exception) else e from None
        self._loaded.add(key)

    def drop(self, key) -> None:
        self.actor.drop.remote(key)  # ordered before any later call to this actor
        self._loaded.discard(key)

    def has(self, key) -> bool:
        return key in self._loaded

    def ready(self, key) -> bool:
        """Always: a call waits for the block inside the actor, not on the engine's thread."""
        return True

    def reading(self) -> bool:
        return False

    def profile(self, key):
        import ray
        return ray.get(self.actor.profile.remote(key))

    def take_pool(self, key):
        import ray
        return ray.get(self.actor.take_pool.remote(key))  # through the object store

    def put_pool(self, key, layout, kv) -> None:
        self.actor.put_pool.remote(key, layout, kv)  # ordered before the block's next run

    def submit(self, call: BatchCall):
        """(status reference, one reference per request's output, fetch the outputs?)."""
        refs = self.actor.run.options(num_returns=len(call.inputs) + 1).remote(call)
        return refs[0], refs[1:], call.kind == "head"

    def collect(self, handles: list) -> list[int]:
        """Indices of the handles done: waits for the first, then takes any others ready."""
        import ray
        status = [h[0] for h in handles]
        ray.wait(status, num_returns=1)
        ready, _ = ray.wait(status, num_returns=len(status), timeout=0)
        done = set(ready)
        return [i for i, s in enumerate(status) if s in done]

    def result(self, handle):
        """The block's error, raised; else its outputs: references that stay in the object
        store for the next actor, or the head's token ids, fetched."""
        import ray
        status, outs, fetch = handle
        try:
            error = ray.get(status)
        except ray.exceptions.RayError as e:  # the actor died
            raise RuntimeError(f"device actor {self.index} failed: {e}") from None
        if error is not None:
            raise error
        return ray.get(outs) if fetch else outs

    def shutdown(self) -> None:
        import ray
        ray.kill(self.actor)


def ray_hosts(zoo_root: str, devices: list[str], dtype: str, address: str | None = None,
              pack: bool = False, graphs: str = "off") -> list[RayHost]:
    """One actor per device, on this machine's Ray (started if needed) or at `address`;
    `pack`: matmul weights in oneDNN's layout on CPU actors (EngineConfig.pack_weights);
    `graphs`: EngineConfig.cuda_graphs."""
    try:
        import ray
    except ImportError as e:
        raise UserError("--backend ray needs Ray: pip install 'ray>=2.9' (or make setup)") from e
    cpus = os.cpu_count() or 1
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False,
                 configure_logging=False, **({} if address else {"num_cpus": cpus}))
    hosts = []
    for i, dev in enumerate(devices):
        gpu = dev.startswith("cuda")
        # a GPU actor sees only its own GPU (Ray sets CUDA_VISIBLE_DEVICES): it is cuda there
        actor_cls = ray.remote(num_cpus=0, num_gpus=1 if gpu else 0)(_DeviceActor)
        threads = 0 if gpu else max(1, cpus // len(devices))
        actor = actor_cls.remote(zoo_root, "cuda" if gpu else dev, dtype, i, threads, pack,
                                  graphs)
        hosts.append(RayHost(actor, i))
    nodes = ray.get([h.actor.node.remote() for h in hosts])  # started (or raise now)
    packs = ray.get([h.actor.packs.remote() for h in hosts])
    for h, node, packed in zip(hosts, nodes, packs, strict=True):
        h.server, h.packs = node, packed  # where, and what its weights cost there
    return hosts
