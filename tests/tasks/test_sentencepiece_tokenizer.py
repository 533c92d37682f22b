"""A DeBERTa-v3-style checkpoint (a SentencePiece ``spm.model`` and no ``tokenizer.json``, as
microsoft/deberta-v3-base ships) loads offline and trains; without the sentencepiece package the failure is one
line naming it."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import DebertaV2Config, DebertaV2Model, DebertaV2Tokenizer

from addrop_cli.tasks.models import load_tokenizer

DEMO = Path(__file__).resolve().parents[2] / "addrop_cli" / "demo_data" / "sst2"


@pytest.fixture(scope="module")
def deberta_v3_like(tmp_path_factory) -> Path:
    """A random 2-layer DeBERTa-v2 with a 200-piece SentencePiece model trained here on demo sentences."""
    import sentencepiece

    sentences = [line.split("\t")[0] for line in (DEMO / "train.tsv").read_text().splitlines()[1:400]]
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences), model_writer=model, vocab_size=200, pad_id=0, bos_id=1, eos_id=2,
        unk_id=3, pad_piece="[PAD]", bos_piece="[CLS]", eos_piece="[SEP]", unk_piece="[UNK]",
        user_defined_symbols=["[MASK]"], minloglevel=2)
    folder = tmp_path_factory.mktemp("deberta-v3-like")
    (folder / "spm.model").write_bytes(model.getvalue())
    DebertaV2Tokenizer(vocab_file=str(folder / "spm.model")).save_pretrained(folder)
    (folder / "tokenizer.json").unlink()  # the Hub checkpoint has none: the tokenizer is built from spm.model
    torch.manual_seed(0)
    DebertaV2Model(DebertaV2Config(vocab_size=200, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                   intermediate_size=37, relative_attention=True, pos_att_type=["p2c", "c2p"],
                                   max_relative_positions=32, position_buckets=16, norm_rel_ebd="layer_norm",
                                   share_att_key=True, max_position_embeddings=128)).save_pretrained(folder)
    return folder


def test_a_sentencepiece_only_tokenizer_loads_offline(deberta_v3_like):
    tokenizer = load_tokenizer(str(deberta_v3_like))
    pieces = tokenizer("a gripping, funny film")["input_ids"]
    assert pieces[0] == tokenizer.cls_token_id == 1 and pieces[-1] == tokenizer.sep_token_id == 2
    assert tokenizer.unk_token_id not in pieces[1:-1] and len(pieces) > 4


def test_deberta_v3_like_checkpoint_trains_with_addrop(deberta_v3_like, tmp_path):
    out = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "addrop_cli", "train", "--task", "sst2", "--model", str(deberta_v3_like),
         "--train-file", str(DEMO / "train.tsv"), "--validation-file", str(DEMO / "dev.tsv"),
         "--max-train-samples", "32", "--max-eval-samples", "16", "--epochs", "2", "--batch-size", "8",
         "--output-dir", str(out)], capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"},
        timeout=300)
    assert result.returncode == 0, result.stderr
    phases = [json.loads(line)["phase"] for line in (out / "history.jsonl").read_text().splitlines()]
    assert phases == ["ft", "addrop"]


def test_without_sentencepiece_the_error_is_one_line_naming_it(deberta_v3_like, tmp_path):
    code = ("import sys; sys.modules['sentencepiece'] = None\n"  # as if the package were not installed
            "from addrop_cli.cli import main; sys.argv = ['addrop', *sys.argv[1:]]; main()")
    result = subprocess.run(
        [sys.executable, "-c", code, "train", "--task", "sst2", "--model", str(deberta_v3_like),
         "--train-file", str(DEMO / "train.tsv"), "--validation-file", str(DEMO / "dev.tsv"),
         "--output-dir", str(tmp_path / "run")], capture_output=True, text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=300)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot load tokenizer"), result.stderr
    assert "pip install sentencepiece" in lines[0]
    assert not (tmp_path / "run").exists()
