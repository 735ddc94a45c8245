"""Cluster simulation with the engine's own placement, routing and batching decisions."""
