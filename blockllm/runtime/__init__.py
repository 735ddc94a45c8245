"""The online serving runtime: requests flow through chains of shared blocks.

The bookkeeping pieces are pure (batch_policy, kv_manager, residency); workers.py is the only module that
touches tensors; engine.py ties them together in a schedule -> run -> postprocess step.
"""
