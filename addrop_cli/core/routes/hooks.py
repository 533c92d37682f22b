"""The module-hook route: AD-DROP through torch module hooks, for eager models whose attention does not go
through transformers' ``AttentionInterface`` (DeBERTa, DeBERTa-v2/v3, MPNet, RoFormer, BLOOM, ...).

These models compute ``probs = softmax(scores)`` and then call an ``nn.Dropout`` *module* on exactly the
(B, H, Q, K) probabilities that multiply V. The probe finds those modules by what they receive (a 4-D tensor
whose rows are probability distributions), not by attribute names. Public hooks on them then do what the
interface route does inside its attention function, nothing in transformers being patched:

- record: the forward hook keeps the dropout's output (the probabilities that multiply V) with autograd;
- apply: the pre-hook replaces the probabilities by ``probs * keep / sum(probs * keep)``, which is exactly
  setting the dropped keys' scores to -inf before the softmax;
- context scale (IGA, Eq. 3): the forward hook returns ``alpha * probs``, so the layer computes alpha A·V,
  while the recorded tensor stays the unscaled A.

What a row can see is read from the probabilities the model computed under its own mask: a key it masks
(padding, causal, a sliding window, DeBERTa's query x key mask) has probability exactly 0 in every head, since
its score is the dtype's minimum (or -10000) before the softmax. A key has to be visible in at least one head.

The hooks act only while a :class:`~addrop_cli.core.routes.base.ForwardState` is armed by
:meth:`HookRoute.forward`; it stays in force until the next forward of the whole model starts, so that gradient
checkpointing, which calls a layer again during the backward, meets the same state. Everything else runs the
stock model. Which families the route refuses is decided before it is built
(:mod:`~addrop_cli.core.routes.connect`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from addrop_cli.core.blockwise_attention import RowBlock
from addrop_cli.core.masking import allowed_keys
from addrop_cli.core.routes.base import (
    PROBE_ENCODER_LENGTH,
    ForwardState,
    ProbedCall,
    hides_every_later_key,
    probe_inputs,
    probing,
    visible_from_probs,
)
from addrop_cli.errors import UserError

ROW_SUM_TOLERANCE = 1e-3  # a probe row of softmax output sums to 1 within this (float32, 5 keys)


def _is_attention_map(tensor: Any) -> bool:
    """A (B, H, Q, K) tensor whose rows are probability distributions (a softmax output)."""
    if not isinstance(tensor, torch.Tensor) or tensor.dim() != 4 or not tensor.is_floating_point():
        return False
    sums = tensor.float().sum(-1)
    return bool(((sums - 1).abs() < ROW_SUM_TOLERANCE).all() and (tensor >= 0).all())


def renormalised(probs: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """``probs * allowed / sum(probs * allowed)`` over keys: softmax with the disallowed scores at -inf.

    Shapes: probs (B, H, Q, K), allowed broadcastable to it. A row left with no probability keeps its own
    (``allowed_keys`` already spares rows whose every visible key would go, so this is only a guard).
    """
    kept = probs * allowed
    total = kept.sum(-1, keepdim=True)
    return torch.where(total > 0, kept / total.clamp_min(torch.finfo(probs.dtype).tiny), probs)


class HookRoute:
    """The module-hook route for one model: probe, then hooks on each attention-probability dropout module. Built
    by :func:`~addrop_cli.core.routes.connect.connect`, which refuses the families it cannot serve first.

    Args:
        model: the (unwrapped) transformers model; hooks stay on its modules for its lifetime.
    """

    state_per_call = False  # armed per forward of the whole model
    keeps_factors = False  # its models materialise their own probabilities: it records them whole

    def __init__(self, model: nn.Module):
        self.state: ForwardState | None = None
        self._armed = False
        self.modules = self._find_sites(model)
        self.calls = self._probe(model)
        model.register_forward_pre_hook(self._model_starts)
        for module in self.modules:
            module.register_forward_pre_hook(self._before_dropout)
            module.register_forward_hook(self._after_dropout)

    def forward(self, model: nn.Module, batch: dict[str, torch.Tensor], state: ForwardState):
        """``model(**batch)`` with ``state`` in force at every attention call (and in its recomputes)."""
        self.state, self._armed = state, True
        return model(**batch)

    # -- probing ---------------------------------------------------------------------------------------

    @staticmethod
    def _probe_forward(model: nn.Module, hook) -> None:
        """One tiny forward in eval mode, without gradients, with ``hook`` on every dropout module."""
        handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Dropout)]
        try:
            with probing(model):
                model(**probe_inputs(model))
        finally:
            for handle in handles:
                handle.remove()

    def _find_sites(self, model: nn.Module) -> list[nn.Module]:
        """The dropout modules that receive attention probabilities, in call order; UserError if one of them
        also receives other tensors, or there is none."""
        maps: list[nn.Module] = []
        others: set[int] = set()

        def look(module, args, output):
            if _is_attention_map(args[0]):
                if module not in maps:
                    maps.append(module)
            else:
                others.add(id(module))

        self._probe_forward(model, look)
        model_type = model.config.model_type
        if not maps:
            raise UserError(f"model type '{model_type}' ({type(model).__name__}) neither routes its attention "
                            "through transformers' AttentionInterface nor applies a dropout module to its attention "
                            "probabilities, so AD-DROP cannot reach it; train it with --no-addrop")
        if any(id(module) in others for module in maps):
            raise UserError(f"model type '{model_type}' ({type(model).__name__}) applies its attention dropout module "
                            "to other tensors too, so AD-DROP cannot tell its attention apart; train it with "
                            "--no-addrop")
        return maps

    def _probe(self, model: nn.Module) -> list[ProbedCall]:
        """Each site's call: query and key lengths, heads, and whether its mask hides every later key."""
        calls: list[ProbedCall] = []
        seen: set[int] = set()

        def describe(module, args, output):
            if id(module) in seen:
                raise UserError(f"model type '{model.config.model_type}' calls one attention dropout module "
                                "twice in a forward; AD-DROP's module hooks need one per layer")
            seen.add(id(module))
            probs = args[0]
            causal = hides_every_later_key(visible_from_probs(probs))
            calls.append(ProbedCall(*probs.shape[-2:], probs.shape[1], causal, frozenset(), id(module)))

        handles = [module.register_forward_hook(describe) for module in self.modules]
        try:
            self._probe_forward(model, lambda *_: None)
        finally:
            for handle in handles:
                handle.remove()
        if any((call.query_length, call.key_length) != (PROBE_ENCODER_LENGTH,) * 2 for call in calls):
            raise UserError(f"model type '{model.config.model_type}' ({type(model).__name__}) attends over positions "
                            "other than its input tokens (pooled, downsampled or latent), which AD-DROP's masks are "
                            "not defined on; train it with --no-addrop")
        return calls

    # -- the hooks -------------------------------------------------------------------------------------

    def _model_starts(self, module, args) -> None:
        """A forward of the whole model: the state armed for it stays; any older one ends."""
        if self._armed:
            self._armed = False
        else:
            self.state = None

    def _before_dropout(self, module: nn.Module, args: tuple) -> tuple | None:
        state = self.state
        if state is None:
            return None
        call = state.call_of[id(module)]
        if call not in state.record and call not in state.drops:
            return None
        probs = args[0]
        visible = visible_from_probs(probs)
        if call in state.record:
            state.visible[call] = visible
            return None
        drops = state.drops[call]
        if callable(drops):
            drops = drops(RowBlock.whole(*visible.shape[-2:]), visible)
        allowed = allowed_keys(visible, drops)
        return (renormalised(probs, allowed), *args[1:])

    def _after_dropout(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
        state = self.state
        if state is None:
            return None
        call = state.call_of[id(module)]
        if call not in state.record and call not in state.context_scale:
            return None
        if call in state.record:
            if torch.is_grad_enabled() and not output.requires_grad:
                # Nothing before this layer is trainable: A becomes a leaf, as in the interface route.
                output = output.detach().requires_grad_(True)
            state.recorded[call] = output
        if call in state.context_scale:
            return output * state.context_scale[call]
        return output
