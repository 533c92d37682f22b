"""The one Accelerate training loop and what surrounds it: batching, checkpoints, evaluation, run directories.

``run_dir`` (file names and readers of a run directory) imports no torch, so ``addrop plot``, the sweep
and the benchmarks read runs without loading the loop.
"""
