"""The online serving runtime: requests flow through chains of shared blocks.

The bookkeeping pieces are pure (batch_policy, kv_manager, residency, placement); hosts.py and
workers.py are the only modules that touch tensors; engine.py ties them together in a
schedule -> run -> postprocess step; routing.py picks each request's replicas.
"""
