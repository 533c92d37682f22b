"""The interface route: AD-DROP inside transformers' own attention dispatch.

We register one attention function, ``"addrop"``, with :class:`transformers.AttentionInterface` and the
matching mask builder with ``AttentionMaskInterface`` (without the latter, padding masks arrive as None).
A model switched to it behaves exactly like its stock attention unless a
:class:`~addrop_cli.core.routes.base.ForwardState` is passed to its forward as the keyword argument
``addrop_state``; transformers hands that keyword down to every attention call, so the state is per forward,
never global and never stored on modules.

Per attention call the state picks one of four modes:

- off: the stock computation (transformers' sdpa function, or the eager formula for the variants sdpa
  cannot run: Gemma2's logit soft-capping and gpt-oss's attention sinks);
- record: eager attention, keeping with autograd the probabilities that multiply V (after softmax and
  attention dropout, as in the reference code, so that random attention dropout cannot zero attributions);
- keep: the stock computation, keeping what GA or AA needs in place of the probabilities (the output and V, or
  the scaled Q and K), all linear in length; the probabilities where Q and K cannot give them again;
- apply: the model's own mask with the dropped positions removed from it; drops asked for block by block run
  through :func:`~addrop_cli.core.blockwise_attention.blockwise_masked_attention` when the call is larger than
  one block and sdpa could have run it.

What a query row can see (its *visible* keys) is read from the mask the model built for that call:
padding, causal and sliding-window masks all arrive there, and a None mask means "everything" or, for a
causal call, the causal triangle (transformers then relies on sdpa's ``is_causal``). Record and apply
modes use exactly that mask; apply never lets a row lose all its visible keys.

A call is identified by its attention module when every module is called once per forward (the probe
checks it): then gradient checkpointing, which calls a layer's attention again during backward, reaches
the same call. Otherwise (ALBERT shares one module across layers) calls are numbered by their order within
the forward. ``layer_idx`` is not used: Marian's encoder leaves it None.
"""

from __future__ import annotations

import sys

import torch
import transformers
from torch.nn import functional as F
from transformers import AttentionInterface, PreTrainedConfig, PreTrainedModel
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from addrop_cli.core.blockwise_attention import RowBlock, blockwise_masked_attention
from addrop_cli.core.masking import allowed_keys
from addrop_cli.core.routes.base import (
    GRADIENT,
    ForwardState,
    KeptCall,
    ProbedCall,
    hides_every_later_key,
    probe_inputs,
    probing,
    visible_keys,
)
from addrop_cli.errors import UserError, first_line

IMPLEMENTATION = "addrop"

# Keyword arguments of an attention call that change its result and that the eager path reproduces.
SOFTCAP, SINKS, POSITION_BIAS = "softcap", "s_aux", "position_bias"
# Keyword arguments that do not change the result of a whole-sequence forward (or are already in the mask).
NEUTRAL_KWARGS = frozenset({"sliding_window", "position_ids", "cache_position", "use_cache", "output_attentions",
                            "is_causal", "layer_idx", "deterministic"})  # deterministic: flash-attention's backward


class NotRouted(UserError):
    """The model's attention does not go through ``AttentionInterface`` (the module-hook route may serve it)."""


class InterfaceRoute:
    """The interface route: the per-forward state travels as the ``addrop_state`` keyword down to every
    attention call (see the module docstring), so each call, recomputed or not, carries its own forward's."""

    state_per_call = True
    keeps_factors = True

    def forward(self, model: torch.nn.Module, batch: dict[str, torch.Tensor], state: ForwardState):
        return model(**batch, addrop_state=state)


# ------------------------------------------------------------------------------------------- the attention


def _is_causal(module: torch.nn.Module, kwargs: dict) -> bool:
    # Mirrors sdpa_attention_forward's own rule, so record/apply see the same mask sdpa would.
    flag = kwargs.get("is_causal")
    return bool(flag if flag is not None else getattr(module, "is_causal", True))


def _variants(kwargs: dict) -> frozenset[str]:
    """The result-changing keyword arguments this call carries (softcap, sinks, position bias, unknown ones)."""
    return frozenset(name for name, value in kwargs.items() if value is not None and name not in NEUTRAL_KWARGS)


def eager_attention(module, query, key, value, allowed, dropout, scaling, kwargs, attributed: bool = False):
    """Attention written out, honouring soft-capping, sinks and position bias; returns (output, probs).

    Shapes: query (B, H, Q, D), key and value (B, H_kv, K, D), ``allowed`` broadcastable to (B, H, Q, K)
    bool. ``probs`` (B, H, Q, K) are the post-dropout probabilities that multiply V, kept in the graph;
    ``attributed`` makes them require grad even when nothing before them does.
    """
    groups = getattr(module, "num_key_value_groups", 1)
    key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    scale = query.shape[-1] ** -0.5 if scaling is None else scaling
    scores = torch.matmul(query * scale, key.transpose(2, 3))  # scaling Q, not Q K^T: a K/D-th of the work
    if kwargs.get(SOFTCAP) is not None:  # Gemma2: cap the logits before the mask, as its eager code does
        scores = torch.tanh(scores / kwargs[SOFTCAP]) * kwargs[SOFTCAP]
    if kwargs.get(POSITION_BIAS) is not None:
        scores = scores + kwargs[POSITION_BIAS]
    scores = scores.masked_fill_(~allowed, torch.finfo(scores.dtype).min)  # a fresh tensor: in place is safe
    sinks = kwargs.get(SINKS)
    if sinks is not None:  # gpt-oss: one learnt logit per head joins the softmax, then is dropped
        sink_column = sinks.reshape(1, -1, 1, 1).expand(*scores.shape[:-1], 1).to(scores.dtype)
        probs = F.softmax(torch.cat([scores, sink_column], dim=-1), dim=-1, dtype=torch.float32)[..., :-1]
    else:
        probs = F.softmax(scores, dim=-1, dtype=torch.float32)
    probs = F.dropout(probs.to(query.dtype), p=dropout, training=module.training)
    if attributed and torch.is_grad_enabled() and not probs.requires_grad:
        # Nothing before this layer is trainable (LoRA on V or the MLP only, or on later layers only): the
        # attribution still needs dF/dA, and A has no upstream path to lose, so it becomes a leaf.
        probs.requires_grad_(True)
    output = torch.matmul(probs, value).transpose(1, 2).contiguous()
    return output, probs


def _shaped(kwargs: dict) -> bool:
    """Whether the call's probabilities are shaped by a variant sdpa does not run (soft-capping, sinks, bias)."""
    return any(kwargs.get(name) is not None for name in (SOFTCAP, SINKS, POSITION_BIAS))


def _attend(module, query, key, value, allowed, attention_mask, dropout, scaling, kwargs):
    """The model's attention with ``allowed`` as its mask (None: the incoming mask, untouched)."""
    if kwargs.get(SOFTCAP) is not None or kwargs.get(SINKS) is not None:
        if allowed is None:
            allowed = visible_keys(attention_mask, query, key, _is_causal(module, kwargs))
        return eager_attention(module, query, key, value, allowed, dropout, scaling, kwargs)[0], None
    if allowed is not None:
        if attention_mask is not None and attention_mask.dtype != torch.bool:  # keep an additive mask's values
            allowed = torch.where(allowed, attention_mask.to(query.dtype), torch.finfo(query.dtype).min)
        attention_mask, kwargs = allowed, {**kwargs, "is_causal": False}  # causality is inside the mask now
    return sdpa_attention_forward(module, query, key, value, attention_mask, dropout, scaling, **kwargs)


def addrop_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    addrop_state: ForwardState | None = None,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The function registered as ``"addrop"``; shapes as in transformers: query (B, H, Q, D)."""
    state = addrop_state
    if state is None:
        return _attend(module, query, key, value, None, attention_mask, dropout, scaling, kwargs)
    call = state.next_call(module)
    wanted = state.probe or call in state.record or call in state.keep or call in state.drops
    visible = state.visible_keys(attention_mask, query, key, _is_causal(module, kwargs)) if wanted else None
    if state.probe:
        state.probed.append(ProbedCall(query.shape[-2], key.shape[-2], query.shape[1], hides_every_later_key(visible),
                                       _variants(kwargs), id(module)))
    if call in state.record:
        output, probs = eager_attention(module, query, key, value, visible, dropout, scaling, kwargs, True)
        state.recorded[call], state.visible[call] = probs, visible
    elif call in state.keep:
        output, probs, state.kept[call] = _keep(module, query, key, value, visible, attention_mask, dropout, scaling,
                                                kwargs, state.keep[call])
        state.visible[call] = visible
    elif call in state.drops:
        output, probs = _attend_dropped(module, query, key, value, visible, state.drops[call],
                                        state.row_blocks(visible, query.shape[1]), attention_mask, dropout, scaling,
                                        kwargs)
    else:
        output, probs = _attend(module, query, key, value, None, attention_mask, dropout, scaling, kwargs)
    if call in state.context_scale:
        output = output * state.context_scale[call]
    return output, probs


def _keep(module, query, key, value, visible, attention_mask, dropout, scaling, kwargs, wanted: str):
    """Keep mode: (output, probs, :class:`KeptCall`). GA keeps the output in the graph and V; AA the scaled Q and K.
    Where attention dropout draws the probabilities or a variant shapes them, they come from the eager formula
    (the dropout draws as in record mode): GA still keeps only the output and V, AA the probabilities."""
    groups = getattr(module, "num_key_value_groups", 1)
    eager = dropout > 0 or _shaped(kwargs)
    if eager:
        output, probs = eager_attention(module, query, key, value, visible, dropout, scaling, kwargs)
    else:
        output, probs = _attend(module, query, key, value, None, attention_mask, dropout, scaling, kwargs)
    if wanted == GRADIENT:
        if torch.is_grad_enabled() and not output.requires_grad:
            output = output.detach().requires_grad_(True)  # nothing before it is trainable: it becomes a leaf
        return output, None, KeptCall(output=output, value=repeat_kv(value, groups).detach())
    if eager:
        return output, None, KeptCall(probs=probs.detach())
    scale = query.shape[-1] ** -0.5 if scaling is None else scaling
    return output, probs, KeptCall(query=(query * scale).detach(), key=repeat_kv(key, groups).detach())


def _attend_dropped(module, query, key, value, visible, drops, blocks, attention_mask, dropout, scaling, kwargs):
    """Apply mode: the call's attention with ``drops`` (a mask, or asked for by block) taken from its visible keys;
    blockwise (over ``blocks``) when the call spans several blocks and sdpa could have run it with a bool mask."""
    if not callable(drops):
        return _attend(module, query, key, value, allowed_keys(visible, drops), attention_mask, dropout, scaling,
                       kwargs)
    bool_mask = attention_mask is None or attention_mask.dtype == torch.bool
    if len(blocks) == 1 or _shaped(kwargs) or not bool_mask:
        whole = drops(RowBlock.whole(*visible.shape[-2:]), visible)
        return _attend(module, query, key, value, allowed_keys(visible, whole), attention_mask, dropout, scaling,
                       kwargs)
    groups = getattr(module, "num_key_value_groups", 1)
    output = blockwise_masked_attention(query, repeat_kv(key, groups), repeat_kv(value, groups), visible, drops,
                                        blocks, dropout, scaling)
    return output.transpose(1, 2).contiguous(), None


def register() -> None:
    """Make ``attn_implementation="addrop"`` known to transformers (idempotent)."""
    AttentionInterface.register(IMPLEMENTATION, addrop_attention_forward)
    AttentionMaskInterface.register(IMPLEMENTATION, sdpa_mask)


register()


# ------------------------------------------------------------------------------------------- switching a model


def switch(model: PreTrainedModel) -> list[ProbedCall]:
    """Switch every attention of ``model`` to the ``addrop`` implementation and describe its attention calls,
    in call order.

    Raises :class:`NotRouted` for models whose attention does not go through ``AttentionInterface`` (left as
    they were), and UserError for attention with a variant that AD-DROP's attention cannot reproduce, or that
    the per-forward state cannot reach (layers that drop the forward's keyword arguments).
    """
    model_type = getattr(model.config, "model_type", type(model).__name__)
    refusal = NotRouted(
        f"model type '{model_type}' ({type(model).__name__}) does not route its attention through "
        "transformers' AttentionInterface, so AD-DROP cannot reach it; use a model such as bert, roberta, "
        "electra, distilbert, albert, xlm-roberta, bart, t5, marian, llama, qwen2, mistral or gemma, or train "
        "with --no-addrop"
    )
    # Decided by probing, not by the class's _supports_attention_backend flag, which some models that do
    # dispatch through the interface (Marian) leave False. Eager-only models log that they cannot switch.
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    try:
        model.set_attn_implementation(IMPLEMENTATION)
    finally:
        transformers.logging.set_verbosity(verbosity)
    configs = {id(c): c for m in model.modules() if isinstance(c := getattr(m, "config", None), PreTrainedConfig)}
    if all(config._attn_implementation != IMPLEMENTATION for config in configs.values()):
        # transformers refused the switch everywhere (its modeling code has no AttentionInterface dispatch):
        # forcing it would only break the mask code of eager models (MPT) before the probe could tell.
        raise refusal
    # EncoderDecoderModel keeps stale copies of its sub-configs: set the implementation on every config.
    previous = {key: config._attn_implementation for key, config in configs.items()}
    for config in configs.values():
        config._attn_implementation = IMPLEMENTATION
    calls = _probe_or_refuse(model, model_type)
    if not calls:  # left as it was, for the module-hook route
        for key, config in configs.items():
            config._attn_implementation = previous[key]
        if hasattr(sys.modules.get(type(model).__module__), "ALL_ATTENTION_FUNCTIONS"):
            # Its modeling code dispatches through the interface, but a layer drops the forward's keyword
            # arguments on the way (Falcon, StableLM, Nemotron): no per-forward state can reach the attention.
            raise UserError(f"model type '{model_type}' ({type(model).__name__}) dispatches its attention through "
                            "transformers' AttentionInterface, but its layers do not pass the forward's keyword "
                            "arguments on to it, so AD-DROP's per-forward state cannot reach its attention; train it "
                            "with --no-addrop")
        raise refusal
    _refuse_unknown_variants(model, model_type, calls)
    return calls


def _probe_or_refuse(model: PreTrainedModel, model_type: str) -> list[ProbedCall]:
    """:func:`probe_calls`, with a forward that fails on the probe's plain input as one line (empty when the
    forward rejects the per-forward state: it does not dispatch it)."""
    try:
        return probe_calls(model)
    except TypeError as error:
        if "addrop_state" not in str(error):
            raise UserError(f"model type '{model_type}' failed AD-DROP's probe forward: {first_line(error)}") from None
        return []
    except ValueError as error:
        raise UserError(f"model type '{model_type}' failed AD-DROP's probe forward: {first_line(error)}") from None


def _refuse_unknown_variants(model: PreTrainedModel, model_type: str, calls: list[ProbedCall]) -> None:
    """Refuse attention calls carrying a result-changing argument that :func:`eager_attention` ignores.

    A model that transformers runs with sdpa gets the same arguments there, where sdpa ignores them too;
    a model that transformers keeps off sdpa must owe it to a variant AD-DROP reproduces.
    """
    honoured = {SOFTCAP, SINKS, POSITION_BIAS}
    unknown = sorted(set().union(*(call.variants for call in calls)) - honoured)
    uses_sdpa = getattr(model, "_supports_sdpa", True)
    if not unknown and (uses_sdpa or any(call.variants & {SOFTCAP, SINKS} for call in calls)):
        return
    what = f"its attention calls carry {', '.join(unknown)}" if unknown else "transformers keeps it off sdpa"
    raise UserError(
        f"model type '{model_type}' ({type(model).__name__}) has an attention variant AD-DROP does not reproduce "
        f"({what}); supported variants are sliding windows, grouped KV heads, logit soft-capping, attention "
        "sinks and position bias; train it with --no-addrop"
    )


def probe_calls(model: PreTrainedModel) -> list[ProbedCall]:
    """Run one tiny forward (no padding) and describe each attention call, in call order."""
    state = ForwardState(probe=True)
    with probing(model):
        model(**probe_inputs(model), addrop_state=state)
    return state.probed
