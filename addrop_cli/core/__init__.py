"""The AD-DROP maths, its baselines and the attention routes: pure torch and transformers, no CLI, no file I/O.

``settings`` (torch-free) < ``masking`` and ``attribution`` (pure torch) and ``model_setup`` < ``routes/`` (the
attention-route seam: ``base``, one module per route, ``connect``) < ``methods/`` (the regularizer seam: ``base``,
one module per method, ``registry``, the method table, torch-free until a regularizer is built).
"""
