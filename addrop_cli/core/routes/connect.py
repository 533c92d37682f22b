"""Which route reaches a model's attention, and which of its attention calls a regularizer acts on.

:func:`connect` first checks the one refusal table (families whose attention AD-DROP's masks are not defined
on), then tries ``AttentionInterface`` (:mod:`~addrop_cli.core.routes.interface`) and falls back to module
hooks on the attention-probability dropout modules (:mod:`~addrop_cli.core.routes.hooks`). A probe forward
maps each attention call to an :class:`~addrop_cli.core.routes.base.AttentionSite`: encoder self-, decoder
self- or cross-attention, and its layer.
"""

from __future__ import annotations

from transformers import PreTrainedModel

from addrop_cli.core.routes.base import PROBE_ENCODER_LENGTH, AttentionRoute, AttentionSite, ProbedCall
from addrop_cli.core.routes.hooks import HookRoute
from addrop_cli.core.routes.interface import InterfaceRoute, NotRouted, switch
from addrop_cli.core.settings import AUTO, CROSS, DECODER, ENCODER
from addrop_cli.errors import UserError

# Families whose attention AD-DROP cannot act on, by model type, whichever route would serve them.
REFUSED = {
    "doge": "its dynamic mask attention puts learnt per-head values into the attention mask, which AD-DROP's "
            "masks do not carry",
    "longformer": "its banded (sliding-window plus global) attention has no (B, H, Q, K) attention map",
    "led": "its banded (sliding-window plus global) attention has no (B, H, Q, K) attention map",
    "big_bird": "its block-sparse attention has no (B, H, Q, K) attention map (set attention_type="
                "'original_full' in its config to use full attention)",
    "bigbird_pegasus": "its block-sparse attention has no (B, H, Q, K) attention map",
    "reformer": "its LSH and local attention have no (B, H, Q, K) attention map",
    "nystromformer": "its Nystrom approximation has no (B, H, Q, K) attention map",
    "xlnet": "it applies one dropout module to attention probabilities and hidden states alike",
}
ENCODER_DECODER_CLASSIFIER = (
    "it is an encoder-decoder with a sequence classification head, whose head feeds the decoder the encoder's own "
    "input, while AD-DROP runs encoder-decoders as seq2seq models only (use an encoder-only or decoder-only model)"
)
TALKING_HEADS = "talking_head mixes the heads after the attention dropout, so the dropped map is not what multiplies V"


def refusal_reason(model: PreTrainedModel) -> str | None:
    """Why AD-DROP cannot act on this model, from its class and config; None when a route may serve it."""
    config = model.config
    if config.is_encoder_decoder and type(model).__name__.endswith("ForSequenceClassification"):
        return ENCODER_DECODER_CLASSIFIER
    if config.model_type == "big_bird" and getattr(config, "attention_type", "") == "original_full":
        return None
    if config.model_type in REFUSED:
        return REFUSED[config.model_type]
    if getattr(config, "talking_head", False):
        return TALKING_HEADS
    return None


def connect(model: PreTrainedModel) -> tuple[AttentionRoute, list[AttentionSite]]:
    """The route to ``model``'s attention and its sites: ``AttentionInterface`` when the model dispatches through
    it, else module hooks on its attention-probability dropout modules (eager encoders such as DeBERTa and MPNet).
    Raises UserError when the model is refused (before either route touches it) or neither route reaches it,
    naming why."""
    try:
        return InterfaceRoute(), install(model)
    except NotRouted:
        if model.config.is_encoder_decoder:
            raise
    route = HookRoute(model)
    return route, classify_sites(route.calls, encoder_decoder=False)


def install(model: PreTrainedModel) -> list[AttentionSite]:
    """Refuse the families of the refusal table, then switch every attention of ``model`` to the interface route
    (:func:`~addrop_cli.core.routes.interface.switch`) and name its attention calls, in call order."""
    reason = refusal_reason(model)
    if reason is not None:
        model_type = getattr(model.config, "model_type", type(model).__name__)
        raise UserError(f"model type '{model_type}' ({type(model).__name__}) cannot take AD-DROP: {reason}; train it "
                        "with --no-addrop")
    return classify_sites(switch(model), model.config.is_encoder_decoder)


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


def calls_by_module(sites: list[AttentionSite]) -> dict[int, int] | None:
    """id(attention module) -> call index when every module is called once per forward (calls named by module
    survive gradient checkpointing's recompute); None when modules are shared across layers (ALBERT), whose
    calls are numbered in order."""
    modules = [site.module for site in sites]
    if len(set(modules)) < len(modules):
        return None
    return {module: call for call, module in enumerate(modules)}
