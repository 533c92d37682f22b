"""The AD-DROP maths and the attention hook: pure torch and transformers, no CLI, no file I/O.

``settings`` (torch-free) < ``masking`` and ``attribution`` (pure torch) < ``attention`` (the
``AttentionInterface`` function) < ``regularizer`` (the two-pass step).
"""
