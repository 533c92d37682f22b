"""The AD-DROP maths, its baselines and the attention routes: pure torch and transformers, no CLI, no file I/O.

``settings`` (torch-free) < ``masking`` and ``attribution`` (pure torch) < ``attention`` (the
``AttentionInterface`` function) and ``module_hooks`` (the eager route) < ``routes`` (the attention-route seam)
and ``model_setup``
< ``method`` (the regularizer seam) < ``regularizer`` (AD-DROP's two-pass step), ``rdrop`` and ``hiddencut``
(the baselines).
"""
