"""The attention-route seam: how a regularizer reaches a model's attention calls.

``base`` (the :class:`~addrop_cli.core.routes.base.AttentionRoute` protocol and the per-forward state) <
``interface`` (transformers' ``AttentionInterface``) and ``hooks`` (module hooks for eager families), one module
per route, neither importing the other < ``connect`` (the refusal table, the choice of route, layer selection).
A regularizer imports ``base`` and ``connect`` only.
"""
