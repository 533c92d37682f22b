"""Shared fixtures: a tiny offline tokenizer and the real GLUE files beside the checkout."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import BertConfig, BertModel, BertTokenizerFast, PreTrainedTokenizerBase

# Tests never reach a hub: a missing model or dataset must fail fast, as it does for offline users.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = [
    "the",
    "an",
    "is",
    "was",
    "not",
    "and",
    "of",
    "to",
    "in",
    "it",
    "this",
    "that",
    "good",
    "bad",
    "movie",
    "film",
    "cat",
    "dog",
    "man",
    "woman",
    "sat",
    "on",
    "mat",
    "very",
    "great",
    ".",
    ",",
    "'",
    "!",
]
LETTERS = [chr(code) for code in range(ord("a"), ord("z") + 1)]


@pytest.fixture(scope="session")
def tiny_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> PreTrainedTokenizerBase:
    """A lowercasing BERT WordPiece tokenizer with 86 tokens (fits the tiny test models' vocab of 100).

    Unknown words fall back to single letters ("##x" pieces), so any lowercase text tokenizes without [UNK].
    """
    vocab = SPECIAL_TOKENS + WORDS + LETTERS + [f"##{letter}" for letter in LETTERS]
    vocab_file = tmp_path_factory.mktemp("tiny_tokenizer") / "vocab.txt"
    vocab_file.write_text("\n".join(vocab) + "\n", encoding="utf-8")
    # transformers 5 takes the vocab file as `vocab`; the old `vocab_file` keyword is silently ignored.
    return BertTokenizerFast(vocab=str(vocab_file))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real GLUE files (../shared/data beside the checkout, or $ADDROP_SHARED_DATA); skip if absent."""
    override = os.environ.get("ADDROP_SHARED_DATA")
    path = Path(override) if override else Path(__file__).resolve().parents[2] / "shared" / "data"
    if not path.is_dir():
        pytest.skip("../shared/data is absent: real GLUE files not available")
    return path


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer) -> Path:
    """A saved 2-layer random BERT encoder with the tiny tokenizer: a model directory the CLI can train."""
    import torch

    torch.manual_seed(0)
    config = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=37, max_position_embeddings=128)
    directory = tmp_path_factory.mktemp("tiny_bert")
    BertModel(config).save_pretrained(directory)
    tiny_tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def learnable_checkpoint(tmp_path_factory, tiny_tokenizer) -> Path:
    """The tiny BERT encoder initialised with std 0.2 instead of 0.02: its features differ between inputs from
    the start, so a few steps at lr 1e-3 change its predictions (the 0.02 one predicts one class for any p,
    seed and lr, and hides what a test compares)."""
    import torch

    torch.manual_seed(0)
    config = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=37, max_position_embeddings=128, initializer_range=0.2)
    directory = tmp_path_factory.mktemp("learnable_bert")
    BertModel(config).save_pretrained(directory)
    tiny_tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture
def live_process():
    """A process that sleeps while the test runs (a lock holder that is alive); killed by its pid after."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield process
    process.kill()
    process.wait()


CUSTOM_METHOD = Path(__file__).resolve().parents[1] / "examples" / "custom_method"


@pytest.fixture(scope="session")
def plugin_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The environment of a Python in which ``examples/custom_method`` (the NEFTune method plugin) is installed:
    ``pip install --target`` into a folder of its own, seen only by subprocesses given this environment."""
    target = tmp_path_factory.mktemp("plugin")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(CUSTOM_METHOD)], check=True, capture_output=True, timeout=300)
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(target), os.environ.get("PYTHONPATH")]))}


@pytest.fixture(scope="session")
def tiny_causal_lm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved 2-layer random Llama language model with the word-level chat tokenizer (tests/tiny_models.py)."""
    from tiny_models import causal_tokenizer, tiny_causal_lm

    directory = tmp_path_factory.mktemp("tiny_causal_lm")
    tiny_causal_lm().save_pretrained(directory)
    causal_tokenizer().save_pretrained(directory)
    return directory


@pytest.fixture
def small_blocks(monkeypatch):
    """Blockwise attention at test sizes: every call split into blocks of a few rows (see row_blocks)."""
    from addrop_cli.core import blockwise_attention

    monkeypatch.setattr(blockwise_attention, "BLOCK_ELEMENTS", 300)
