"""The regularizer seam: one module per method behind :class:`~addrop_cli.core.methods.base.Regularizer`.

``base`` (the protocol and what every method shares) < ``addrop`` (the paper's method), ``rdrop`` and
``hiddencut`` (the baselines of the paper's Table 1), none importing another < ``registry`` (the method table,
plugins from the ``addrop.methods`` entry points, and :func:`~addrop_cli.core.methods.registry.make_regularizer`).
Only the registry names the method modules, and it imports them only when a regularizer is built.
"""
