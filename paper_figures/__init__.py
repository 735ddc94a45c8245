"""Figures drawn from results/ only (seaborn, PNG and PDF); redrawable without a rerun."""
