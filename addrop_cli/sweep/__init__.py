"""Sweeps: a resumable grid of ``addrop train`` runs and its summary.

``grid`` (the command-line grammar) < ``plan`` (trials, manifest, result rows) < ``runner`` (running trials)
and ``summary`` (tables, best recipe, heatmaps).
"""
