"""Every sequence-classification family of transformers (``MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES``)
either trains through one of AD-DROP's two attention routes or is refused when ADDrop is built, in one line
saying why.

Each family is built from a tiny config (hidden 32, 2 layers, 4 heads, vocabulary 100, only what the family
needs besides) and, for a family that works:

- ADDrop picks the expected route (``InterfaceRoute`` or ``HookRoute``) and sees the expected kind of attention
  (bidirectional encoder or causal decoder self-attention) in every layer;
- nothing dropped (each layer in apply mode with an empty drop mask), the logits are the stock model's; so are
  those of the recording forward the attribution runs (eval mode);
- the candidate regions (p = 0.9) of a right-padded batch never hold a padding key or a padding query row, nor,
  in a causal family, a later key;
- one AD-DROP step in train mode gives a finite loss whose backward reaches the parameters.

A refused family gets a one-line UserError naming the reason.

Not built here (``SKIPPED``): families whose classifier cannot be built on a CPU without extra packages.
Families with a multimodal config (gemma3, qwen3_5, modernvbert, ultravbert) are built with tiny vision configs
and run on text alone, which their sequence classifiers accept; layoutlm and layoutlmv3 run without bounding boxes
(all zero, their default), layoutlmv3 without a page image.
"""

from __future__ import annotations

import pytest
import torch
import transformers
from tiny_models import VOCAB, random_batch
from transformers import AutoConfig, AutoModelForSequenceClassification
from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES
from transformers.models.auto.modeling_auto import MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES

from addrop_cli.core.methods.addrop import ADDrop
from addrop_cli.core.routes.base import ForwardState
from addrop_cli.core.routes.hooks import HookRoute
from addrop_cli.core.routes.interface import InterfaceRoute
from addrop_cli.core.settings import ADDropConfig
from addrop_cli.errors import UserError

MAX_PARAMETERS = 30_000_000  # counted on the meta device before anything is built
# Logits that should equal the stock model's: measured at most 2.1e-6 apart over every family here (the eager
# recording forward against stock sdpa, zamba; 3.7e-8 for an empty drop mask, 3e-8 for a plain forward after
# ADDrop), so a few times that.
TOLERANCE = 1e-5
# Dropping every candidate moved each family's logits by at least 2.6e-4 (zamba2; up to 1.6): the stock
# comparisons are not won by a model whose logits ignore its attention.
MOVED = 1e-4

# -- tiny configs --------------------------------------------------------------------------------------------
ENC = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
           max_position_embeddings=64)
# Decoders pool the last token that is not the pad token: the batches pad with id 0.
DEC = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
           head_dim=8, intermediate_size=48, max_position_embeddings=64, pad_token_id=0, bos_token_id=1,
           eos_token_id=2)
GPT = dict(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64, pad_token_id=0)
# Mixture-of-experts sizes stay multiples of 16 bytes: grouped_mm needs 16-byte strides (37 floats fail).
MOE = dict(DEC, num_experts_per_tok=2, moe_intermediate_size=16)
# Multi-head latent attention (DeepSeek-V2/V3 and kin): as many KV heads as heads, rope part = head_dim.
MLA = dict(MOE, num_key_value_heads=4, kv_lora_rank=16, q_lora_rank=24, qk_rope_head_dim=8, qk_nope_head_dim=8,
           v_head_dim=8, n_routed_experts=4, n_shared_experts=1, n_group=1, topk_group=1, first_k_dense_replace=1)
LINEAR_ATTENTION = dict(layer_types=["linear_attention", "full_attention"], linear_key_head_dim=8,
                        linear_value_head_dim=8, linear_num_key_heads=2, linear_num_value_heads=4)
VISION = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=37, image_size=28,
              patch_size=14)
S2S = dict(vocab_size=VOCAB, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
           decoder_attention_heads=4, encoder_ffn_dim=37, decoder_ffn_dim=37, max_position_embeddings=64,
           pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=2)
T5 = dict(vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=37, num_layers=2, num_decoder_layers=2, num_heads=4,
          pad_token_id=0, eos_token_id=2, decoder_start_token_id=0)
XLM = dict(vocab_size=VOCAB, emb_dim=32, n_layers=2, n_heads=4, max_position_embeddings=64)

# -- expected outcomes ---------------------------------------------------------------------------------------
ENCODER, DECODER = "interface", "interface-causal"  # AttentionInterface route: bidirectional / causal
HOOKS, HOOKS_CAUSAL = "hooks", "hooks-causal"  # module-hook route
ENCODER_DECODER = "refused: is an encoder-decoder with a sequence classification head"
NOT_REACHED = ("refused: neither routes its attention through transformers' AttentionInterface nor applies a "
               "dropout module to its attention probabilities")
KWARGS_DROPPED = "refused: its layers do not pass the forward's keyword arguments on to it"
NOT_TOKENS = "refused: attends over positions other than its input tokens"

FAMILIES: dict[str, tuple[dict, str]] = {
    # AttentionInterface, bidirectional encoders
    "albert": (dict(ENC, embedding_size=16), ENCODER),
    "bert": (ENC, ENCODER),
    "camembert": (dict(ENC, pad_token_id=1), ENCODER),
    "data2vec-text": (ENC, ENCODER),
    "distilbert": (dict(vocab_size=VOCAB, dim=32, n_layers=2, n_heads=4, hidden_dim=37, max_position_embeddings=64),
                   ENCODER),
    "electra": (dict(ENC, embedding_size=32), ENCODER),
    "ernie": (ENC, ENCODER),
    "esm": (dict(ENC, pad_token_id=1), ENCODER),
    "esmc": (dict(DEC, num_key_value_heads=4, pad_token_id=1, bos_token_id=0), ENCODER),  # no grouped KV heads
    "eurobert": (DEC, ENCODER),
    "gte": (ENC, ENCODER),
    "jina_embeddings_v3": (ENC, ENCODER),
    "layoutlm": (ENC, ENCODER),
    "layoutlmv3": (dict(ENC, coordinate_size=4, shape_size=8, input_size=32, patch_size=16), ENCODER),  # 4*4+2*8
    "mobilebert": (dict(ENC, embedding_size=16, intra_bottleneck_size=32, true_hidden_size=32, initializer_range=0.2),
                   ENCODER),  # at the default 0.02 its logits barely move (1e-6) when keys are dropped
    "modernbert": (dict(ENC, pad_token_id=0), ENCODER),
    "modernvbert": (dict(text_config=dict(ENC, pad_token_id=0), vision_config=VISION), ENCODER),
    "nomic_bert": (ENC, ENCODER),
    "roberta": (dict(ENC, pad_token_id=1), ENCODER),
    "roberta-prelayernorm": (dict(ENC, pad_token_id=1), ENCODER),
    "roc_bert": (dict(ENC, pronunciation_vocab_size=10, shape_vocab_size=10, pronunciation_embed_dim=8,
                      shape_embed_dim=8), ENCODER),
    "ultrabert": (dict(ENC, pad_token_id=0), ENCODER),
    "ultravbert": (dict(text_config=dict(ENC, pad_token_id=0), vision_config=VISION), ENCODER),
    "xlm-roberta": (dict(ENC, pad_token_id=1), ENCODER),
    "xlm-roberta-xl": (dict(ENC, pad_token_id=1), ENCODER),
    "xmod": (dict(ENC, pad_token_id=1, languages=["en_XX"], default_language="en_XX"), ENCODER),
    # AttentionInterface, causal decoders
    "arcee": (DEC, DECODER),
    "biogpt": (dict(ENC, pad_token_id=0), DECODER),
    "cohere_compass_text": (dict(DEC, layer_types=["full_attention"] * 2, rope_parameters={"full_attention": dict(
        rope_type="default", rope_theta=10000.0, mrope_section=[2, 1, 1])}), DECODER),
    "ctrl": (dict(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, dff=37, n_positions=64, pad_token_id=0),
             DECODER),
    "diffllama": (DEC, DECODER),
    "exaone4": (DEC, DECODER),
    "gemma": (DEC, DECODER),
    "gemma2": (DEC, DECODER),
    "gemma3": (dict(text_config=DEC, vision_config=VISION, mm_tokens_per_image=4), DECODER),
    "gemma3_text": (DEC, DECODER),
    "glm": (DEC, DECODER),
    "glm4": (DEC, DECODER),
    "gpt-sw3": (GPT, DECODER),
    "gpt2": (GPT, DECODER),
    "gpt_bigcode": (GPT, DECODER),
    "gpt_neox": (dict(ENC, pad_token_id=0), DECODER),
    "gptj": (dict(GPT, rotary_dim=4), DECODER),  # rotary_dim <= head_dim 8
    "helium": (DEC, DECODER),
    "hunyuan_v1_dense": (DEC, DECODER),
    "llama": (DEC, DECODER),
    "ministral": (DEC, DECODER),
    "ministral3": (DEC, DECODER),
    "mistral": (DEC, DECODER),
    "modernbert-decoder": (dict(ENC, pad_token_id=0), DECODER),
    "olmo": (DEC, DECODER),
    "olmo2": (DEC, DECODER),
    "olmo3": (DEC, DECODER),
    "opt": (dict(ENC, ffn_dim=37, word_embed_proj_dim=32, pad_token_id=0), DECODER),
    "persimmon": (DEC, DECODER),
    "phi": (DEC, DECODER),
    "phi3": (DEC, DECODER),
    "qwen2": (DEC, DECODER),
    "qwen3": (DEC, DECODER),
    "seed_oss": (DEC, DECODER),
    "smollm3": (DEC, DECODER),
    "starcoder2": (DEC, DECODER),
    # ... mixture of experts
    "gpt_oss": (dict(DEC, num_local_experts=2, num_experts_per_tok=1, sliding_window=4), DECODER),
    "hunyuan_v1_moe": (dict(MOE, num_experts=4, moe_topk=2), DECODER),
    "jetmoe": (dict(DEC, num_local_experts=2, num_experts_per_tok=1), DECODER),
    "minimax": (dict(MOE, num_local_experts=2, num_experts_per_tok=1, layer_types=["full_attention"] * 2), DECODER),
    "mixtral": (dict(DEC, num_local_experts=2, num_experts_per_tok=1), DECODER),
    "phimoe": (dict(DEC, num_local_experts=2, num_experts_per_tok=1), DECODER),
    "qwen2_moe": (dict(MOE, num_experts=4, shared_expert_intermediate_size=16), DECODER),
    "qwen3_moe": (dict(MOE, num_experts=4), DECODER),
    # ... multi-head latent attention
    "axk1": (dict(MLA, mlp_layer_types=["dense", "sparse"]), DECODER),
    "deepseek_v2": (dict(MLA, n_group=None, topk_group=None), DECODER),
    "deepseek_v3": (MLA, DECODER),
    "minicpm3": (MLA, DECODER),
    "mistral4": (dict(MLA, head_dim=16), DECODER),
    # ... hybrids: AD-DROP acts on their softmax attention layers, the Mamba / linear-attention layers run stock
    "jamba": (dict(DEC, attn_layer_period=2, attn_layer_offset=1, expert_layer_period=2, expert_layer_offset=1,
                   num_experts=2, mamba_dt_rank=4, mamba_d_state=4, use_mamba_kernels=False), DECODER),
    "qwen3_5": (dict(text_config=dict(DEC, **LINEAR_ATTENTION), vision_config=dict(
        depth=1, hidden_size=32, num_heads=4, intermediate_size=37, out_hidden_size=32)), DECODER),
    "qwen3_5_text": (dict(DEC, **LINEAR_ATTENTION), DECODER),
    "qwen3_next": (dict(MOE, num_experts=4, shared_expert_intermediate_size=16, **LINEAR_ATTENTION), DECODER),
    "zamba": (dict({key: value for key, value in DEC.items() if key != "head_dim"}, attention_hidden_size=64,
                   attention_head_dim=16, mamba_dt_rank=4, mamba_d_state=4, n_mamba_heads=2, num_hidden_layers=3,
                   layers_block_type=["mamba", "hybrid", "hybrid"], use_mamba_kernels=False,
                   initializer_range=0.2), DECODER),  # as mobilebert
    "zamba2": (dict(DEC, mamba_d_state=4, mamba_headdim=8, n_mamba_heads=8, hybrid_layer_ids=[1],
                    layers_block_type=["mamba", "hybrid"], use_mamba_kernels=False, chunk_size=4), DECODER),
    # module hooks (eager attention with an nn.Dropout module on the attention probabilities)
    "convbert": (dict(ENC, embedding_size=32), HOOKS),
    "deberta": (dict(ENC, pooler_hidden_size=32), HOOKS),
    "deberta-v2": (dict(ENC, pooler_hidden_size=32), HOOKS),
    "ibert": (ENC, HOOKS),
    "luke": (dict(ENC, entity_vocab_size=10, entity_emb_size=16), HOOKS),
    "megatron-bert": (ENC, HOOKS),
    "mpnet": (ENC, HOOKS),
    "rembert": (dict(ENC, input_embedding_size=16, output_embedding_size=16), HOOKS),
    "roformer": (dict(ENC, embedding_size=32), HOOKS),
    "squeezebert": (dict(ENC, embedding_size=32, intermediate_size=64), HOOKS),  # groups of 4 divide 32 and 64
    "tapas": (ENC, HOOKS),
    "bloom": (dict(vocab_size=VOCAB, hidden_size=32, n_layer=2, n_head=4, pad_token_id=0), HOOKS_CAUSAL),
    "gpt_neo": (dict(vocab_size=VOCAB, hidden_size=32, num_layers=2, num_heads=4, max_position_embeddings=64,
                     attention_types=[[["global", "local"], 1]], window_size=4, pad_token_id=0), HOOKS_CAUSAL),
    "openai-gpt": (GPT, HOOKS_CAUSAL),
    # refused
    "axk2": (dict(MLA, mlp_layer_types=["dense", "sparse"], layer_types=["indexed_attention"] * 2, index_topk=8,
                  index_head_dim=8, index_n_heads=2, gated_norm_rank=4),
             "refused: its attention calls carry indices"),  # top-k indexed (sparse) attention
    "big_bird": (ENC, "refused: its block-sparse attention has no (B, H, Q, K) attention map"),
    "canine": (dict(ENC, num_hash_buckets=64, downsampling_rate=2), NOT_TOKENS),
    "doge": (DEC, "refused: its dynamic mask attention puts learnt per-head values into the attention mask"),
    "falcon": (dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_kv_heads=2,
                    new_decoder_architecture=True, pad_token_id=0), KWARGS_DROPPED),
    "flaubert": (XLM, NOT_REACHED),
    "fnet": (ENC, NOT_REACHED),  # no attention at all: Fourier token mixing
    "funnel": (dict(vocab_size=VOCAB, block_sizes=[1, 1], d_model=32, n_head=4, d_head=8, d_inner=37,
                    num_decoder_layers=1), NOT_TOKENS),
    "lilt": (dict(ENC, hidden_size=48), "refused: calls one attention dropout module twice in a forward"),
    "longformer": (dict(ENC, attention_window=4), "refused: its banded (sliding-window plus global) attention"),
    "markuplm": (dict(ENC, max_depth=4), "refused: transformers keeps it off sdpa"),  # its -10000 additive mask
    "mpt": (dict(d_model=32, n_heads=4, n_layers=2, max_seq_len=64, vocab_size=VOCAB, pad_token_id=0), NOT_REACHED),
    "mra": (ENC, NOT_REACHED),
    "nemotron": (DEC, KWARGS_DROPPED),
    "nystromformer": (dict(ENC, num_landmarks=4, segment_means_seq_len=64),  # landmarks < length, as checkpoints
                      "refused: its Nystrom approximation has no (B, H, Q, K) attention map"),
    "perceiver": (dict(vocab_size=VOCAB, d_model=32, num_latents=4, d_latents=32, num_self_attends_per_block=1,
                       num_self_attention_heads=4, num_cross_attention_heads=4, max_position_embeddings=64),
                  NOT_TOKENS),
    "reformer": (dict(vocab_size=VOCAB, hidden_size=32, num_attention_heads=4, attention_head_size=8,
                      attn_layers=["local", "lsh"], axial_pos_shape=[8, 8], axial_pos_embds_dim=[16, 16],
                      max_position_embeddings=64, feed_forward_size=37, local_attn_chunk_length=4,
                      lsh_attn_chunk_length=4, num_buckets=4, is_decoder=False),
                 "refused: its LSH and local attention have no (B, H, Q, K) attention map"),
    "stablelm": (DEC, KWARGS_DROPPED),
    "xlm": (XLM, NOT_REACHED),
    "xlnet": (dict(vocab_size=VOCAB, d_model=32, n_layer=2, n_head=4, d_inner=37),
              "refused: it applies one dropout module to attention probabilities and hidden states alike"),
    "yoso": (ENC, NOT_REACHED),
    # ... encoder-decoders with a classification head
    "bart": (S2S, ENCODER_DECODER),
    "bigbird_pegasus": (S2S, ENCODER_DECODER),
    "mbart": (S2S, ENCODER_DECODER),
    "mt5": (T5, ENCODER_DECODER),
    "mvp": (S2S, ENCODER_DECODER),
    "plbart": (S2S, ENCODER_DECODER),
    "t5": (T5, ENCODER_DECODER),
    "t5gemma": (dict(encoder=DEC, decoder=DEC, vocab_size=VOCAB, pad_token_id=0, bos_token_id=1, eos_token_id=2),
                ENCODER_DECODER),
    "t5gemma2": (dict(encoder=dict(text_config=DEC, vision_config=VISION), decoder=DEC, pad_token_id=0,
                      bos_token_id=1, eos_token_id=2), ENCODER_DECODER),
    "umt5": (T5, ENCODER_DECODER),
}

# Families of the mapping not built here, and why.
SKIPPED = {
    # Its eager self-attention applies an nn.Dropout module to the softmax output: probably the module-hook
    # route, not checked here.
    "layoutlmv2": "LayoutLMv2Model requires detectron2 (its visual backbone), which is not on PyPI and must be built "
                  "from source",
}

# A config variant beside the table: BigBird with full attention takes the module-hook route.
VARIANTS = {"big_bird-original_full": ("big_bird", dict(ENC, attention_type="original_full"), HOOKS)}

WORKING = sorted(name for name, (_, outcome) in FAMILIES.items() if not outcome.startswith("refused"))
REFUSED = sorted(name for name, (_, outcome) in FAMILIES.items() if outcome.startswith("refused"))


def build(model_type: str, kwargs: dict) -> torch.nn.Module:
    """The family's sequence classifier from a tiny config, eval mode, fixed seed; skipped where this transformers
    has no such family."""
    if model_type not in CONFIG_MAPPING_NAMES:
        pytest.skip(f"transformers {transformers.__version__} has no model type '{model_type}'")
    config = AutoConfig.for_model(model_type, **kwargs)
    with torch.device("meta"):
        size = sum(p.numel() for p in AutoModelForSequenceClassification.from_config(config).parameters())
    assert size < MAX_PARAMETERS, f"the tiny '{model_type}' config has {size} parameters"
    torch.manual_seed(0)
    return AutoModelForSequenceClassification.from_config(config).eval()


def test_every_sequence_classification_family_is_classified():
    unclassified = sorted(set(MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES) - set(FAMILIES) - set(SKIPPED))
    assert unclassified == [], f"give these families a tiny config and an outcome in FAMILIES: {unclassified}"
    assert not set(FAMILIES) & set(SKIPPED)


def allowed_keys(batch: dict, causal: bool) -> torch.Tensor:
    """(B, 1, Q, K): real query rows see real keys (right padding), and in a causal family no later key."""
    mask = batch["attention_mask"].bool()
    allowed = mask[:, None, :, None] & mask[:, None, None, :]
    if causal:
        length = mask.shape[1]
        allowed = allowed & torch.ones(length, length, dtype=torch.bool).tril()
    return allowed


def nothing_dropped(heads: int):
    """A drop function for one call: an empty (B, H, R, S) mask whatever the block and its visible keys."""
    return lambda block, visible: torch.zeros(visible.shape[0], heads, *visible.shape[2:], dtype=torch.bool)


def check_family(model_type: str, kwargs: dict, outcome: str) -> None:
    model, batch = build(model_type, kwargs), random_batch()
    inputs = {key: value for key, value in batch.items() if key != "labels"}
    with torch.no_grad():
        stock = model(**inputs).logits
    addrop = ADDrop(model, ADDropConfig(layers="all", p=0.9))
    route, causal = {ENCODER: (InterfaceRoute, False), DECODER: (InterfaceRoute, True),
                     HOOKS: (HookRoute, False), HOOKS_CAUSAL: (HookRoute, True)}[outcome]
    assert isinstance(addrop.route, route)
    assert addrop.sites and {site.kind for site in addrop.sites} == {"decoder" if causal else "encoder"}
    assert addrop.selected == tuple(range(len(addrop.sites)))

    # Nothing dropped: every layer through the apply path, the stock logits; a plain forward stays stock.
    drops = {call: nothing_dropped(addrop.sites[call].num_heads) for call in addrop.selected}
    with torch.no_grad():
        empty = addrop.route.forward(model, inputs, ForwardState(drops=drops, call_of=addrop.call_of)).logits
        after = model(**inputs).logits
    torch.testing.assert_close(empty, stock, atol=TOLERANCE, rtol=0)
    torch.testing.assert_close(after, stock, atol=TOLERANCE, rtol=0)

    # The attribution's recording forward computes the stock model; candidates stay among allowed keys.
    found = addrop.attribute(batch)
    torch.testing.assert_close(found.logits, stock, atol=TOLERANCE, rtol=0)
    allowed = allowed_keys(batch, causal)
    regions = addrop.candidates(batch, found)
    for call, region in regions.items():
        outside = region & ~allowed
        assert not outside.any(), f"call {call}: {int(outside.sum())} candidates at masked or later keys"
        assert region.any(), f"call {call}: no candidates"
    with torch.no_grad():  # every candidate dropped: the logits move far more than TOLERANCE
        dropped = addrop.route.forward(model, inputs, ForwardState(drops=regions, call_of=addrop.call_of)).logits
    assert (dropped - stock).abs().max() > MOVED

    # One AD-DROP training step.
    model.train()
    torch.manual_seed(0)
    loss = addrop.loss(batch)
    assert loss.isfinite()
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(grad.isfinite().all() for grad in grads)


@pytest.mark.parametrize("model_type", WORKING)
def test_family_takes_its_route_keeps_stock_logits_and_trains_within_its_mask(model_type):
    check_family(model_type, *FAMILIES[model_type])


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_config_variant_takes_its_route_keeps_stock_logits_and_trains_within_its_mask(variant):
    check_family(*VARIANTS[variant])


@pytest.mark.parametrize("model_type", REFUSED)
def test_family_is_refused_in_one_line(model_type):
    kwargs, outcome = FAMILIES[model_type]
    model = build(model_type, kwargs)
    with pytest.raises(UserError) as caught:
        ADDrop(model, ADDropConfig())
    message = str(caught.value)
    assert "\n" not in message
    assert f"'{model_type}'" in message
    assert outcome.removeprefix("refused: ") in message, message
