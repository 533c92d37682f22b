"""The attention-route seam: how a regularizer reaches a model's attention calls.

:func:`connect` picks the route: ``AttentionInterface`` (:class:`~addrop_cli.core.attention.InterfaceRoute`) when
the model dispatches through it, else module hooks on its attention-probability dropout modules
(:class:`~addrop_cli.core.module_hooks.HookRoute`); a probe forward maps each attention call to an
:class:`AttentionSite` (encoder self-, decoder self- or cross-attention, and its layer).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import transformers
from transformers import PreTrainedConfig, PreTrainedModel

from addrop_cli.core.attention import (
    IMPLEMENTATION,
    POSITION_BIAS,
    SINKS,
    SOFTCAP,
    ForwardState,
    InterfaceRoute,
    ProbedCall,
)
from addrop_cli.core.settings import AUTO, CROSS, DECODER, ENCODER
from addrop_cli.errors import UserError, first_line

PROBE_ENCODER_LENGTH, PROBE_DECODER_LENGTH = 5, 3
# Families that switch to the ``addrop`` attention but carry in their mask what AD-DROP's attention does not keep.
INTERFACE_REFUSED = {
    "doge": "its dynamic mask attention puts learnt per-head values into the attention mask, which AD-DROP's "
            "masks do not carry",
}


@dataclass(frozen=True)
class AttentionSite:
    """One attention call of a forward: its kind, its layer index among calls of that kind, and its module."""

    kind: str
    layer: int
    num_heads: int
    module: int = 0  # id() of the attention module




class NotRouted(UserError):
    """The model's attention does not go through ``AttentionInterface`` (the module-hook route may serve it)."""


class AttentionRoute(Protocol):
    """How ADDrop reaches a model's attention calls: :class:`~addrop_cli.core.attention.InterfaceRoute` or
    :class:`~addrop_cli.core.module_hooks.HookRoute`. ``forward`` runs ``model(**batch)`` with ``state`` in force
    at every attention call."""

    def forward(self, model: torch.nn.Module, batch: dict[str, torch.Tensor], state: ForwardState) -> Any: ...


def connect(model: PreTrainedModel) -> tuple[AttentionRoute, list[AttentionSite]]:
    """The route to ``model``'s attention and its sites: ``AttentionInterface`` when the model dispatches through
    it, else module hooks on its attention-probability dropout modules (eager encoders such as DeBERTa and MPNet).
    Raises UserError when neither reaches it, naming why."""
    if model.config.is_encoder_decoder and type(model).__name__.endswith("ForSequenceClassification"):
        # Its head feeds the decoder the encoder's own input and reads the decoder's <eos> state, while AD-DROP
        # runs encoder-decoders as seq2seq models (target tokens as labels, decoder calls told apart by length).
        raise UserError(f"model type '{model.config.model_type}' ({type(model).__name__}) is an encoder-decoder "
                        "with a sequence classification head, which AD-DROP does not support (it runs encoder-decoders "
                        "as seq2seq models only); use an encoder-only or decoder-only model, or train with --no-addrop")
    try:
        return InterfaceRoute(), install(model)
    except NotRouted:
        if model.config.is_encoder_decoder:
            raise
    from addrop_cli.core.module_hooks import HookRoute

    route = HookRoute(model)
    return route, classify_sites(route.calls, encoder_decoder=False)


def install(model: PreTrainedModel) -> list[AttentionSite]:
    """Switch every attention of ``model`` to the ``addrop`` implementation and map its attention calls.

    Returns one :class:`AttentionSite` per attention call of a forward, in call order.
    Raises :class:`NotRouted` for models whose attention does not go through ``AttentionInterface``, and
    UserError for attention with a variant that AD-DROP's attention cannot reproduce, or that the per-forward
    state cannot reach (layers that drop the forward's keyword arguments).
    """
    model_type = getattr(model.config, "model_type", type(model).__name__)
    refusal = NotRouted(
        f"model type '{model_type}' ({type(model).__name__}) does not route its attention through "
        "transformers' AttentionInterface, so AD-DROP cannot reach it; use a model such as bert, roberta, "
        "electra, distilbert, albert, xlm-roberta, bart, t5, marian, llama, qwen2, mistral or gemma, or train "
        "with --no-addrop"
    )
    if model_type in INTERFACE_REFUSED:
        raise UserError(f"model type '{model_type}' ({type(model).__name__}) cannot take AD-DROP: "
                        f"{INTERFACE_REFUSED[model_type]}; train it with --no-addrop")
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
    try:
        calls = probe_calls(model)
    except TypeError as error:
        calls = []  # a forward that rejects the per-forward state does not dispatch it
        if "addrop_state" not in str(error):
            raise UserError(f"model type '{model_type}' failed AD-DROP's probe forward: {first_line(error)}") from None
    except ValueError as error:
        raise UserError(f"model type '{model_type}' failed AD-DROP's probe forward: {first_line(error)}") from None
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
    return classify_sites(calls, model.config.is_encoder_decoder)


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
    device = next(model.parameters()).device
    inputs = {"input_ids": torch.ones(1, PROBE_ENCODER_LENGTH, dtype=torch.long, device=device)}
    inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
    if model.config.is_encoder_decoder:
        inputs["decoder_input_ids"] = torch.ones(1, PROBE_DECODER_LENGTH, dtype=torch.long, device=device)
    state = ForwardState(probe=True)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(**inputs, addrop_state=state)
    finally:
        model.train(was_training)
    return state.probed


def classify_sites(calls: list[ProbedCall], encoder_decoder: bool) -> list[AttentionSite]:
    """Name each call's kind: encoder (bidirectional) self-, decoder (causal) self- or cross-attention.

    In an encoder-decoder model the probe gives encoder and decoder inputs different lengths, so a call's
    (query, key) lengths tell its kind; in any other model a self-attention call whose mask hides every later
    key is causal, i.e. decoder self-attention (Llama, Qwen, Mistral, Gemma ...).
    """
    sites, counts = [], {ENCODER: 0, DECODER: 0, CROSS: 0}
    for call in calls:
        if encoder_decoder:
            if call.query_length == PROBE_ENCODER_LENGTH:
                kind = ENCODER
            elif call.key_length == PROBE_ENCODER_LENGTH:
                kind = CROSS
            else:
                kind = DECODER
        else:
            kind = DECODER if call.causal else ENCODER
        sites.append(AttentionSite(kind, counts[kind], call.num_heads, call.module))
        counts[kind] += 1
    return sites


def resolve_kinds(kinds: str | list[str], sites: list[AttentionSite]) -> list[str]:
    """``auto``: the encoder's self-attention, or a decoder-only model's causal self-attention."""
    if kinds != AUTO:
        return list(kinds)
    return [ENCODER] if any(site.kind == ENCODER for site in sites) else [DECODER]


def select_calls(sites: list[AttentionSite], kinds: str | list[str], layers: str | list[int],
                 key: str = "addrop.layers") -> tuple[int, ...]:
    """Call indices of the attention layers a regularizer acts on: ``layers`` (the recipe's ``key``) counts within
    each kind."""
    selected = []
    for kind in resolve_kinds(kinds, sites):
        calls = [i for i, site in enumerate(sites) if site.kind == kind]
        if not calls:
            present = sorted({site.kind for site in sites})
            raise UserError(f"addrop.attention includes '{kind}', but this model has no {kind} attention layers; "
                            f"it has {', '.join(present)} attention (or use auto)")
        if layers == "first":
            indices = [0]
        elif layers == "all":
            indices = list(range(len(calls)))
        else:
            indices = list(layers)
            bad = [i for i in indices if i >= len(calls)]
            if bad:
                raise UserError(
                    f"{key}={indices} is out of range: this model has {len(calls)} {kind} attention "
                    f"layers, valid indices are 0 to {len(calls) - 1}"
                )
        selected.extend(calls[i] for i in indices)
    return tuple(sorted(set(selected)))


