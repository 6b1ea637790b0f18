"""The student: a small BERT for edge CPUs, built from the teacher.

* its vocabulary is the teacher's word pieces that the domain uses, plus every single-character
  piece (and its ``##`` form) so that words never seen still tokenize instead of becoming [UNK];
* its embeddings start as a PCA projection of the teacher's rows for those pieces;
* its shape (layers, hidden size, heads) comes from :class:`StudentConfig` and is saved beside
  the weights (``config.json`` + ``model.safetensors``), so one loader rebuilds it anywhere.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from edgeloop.config import StudentConfig

log = logging.getLogger(__name__)

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def _keeps_char(piece: str) -> bool:
    ch = piece[2:] if piece.startswith("##") else piece
    return len(ch) == 1 and ord(ch) < 0x250  # ASCII and Latin letters: the shop's languages


def prune_vocab(teacher_tokenizer, corpus: list[str]) -> list[str]:
    """Word pieces the corpus uses plus all single-character pieces, specials first."""
    vocab = teacher_tokenizer.get_vocab()
    used: set[int] = set()
    for ids in teacher_tokenizer(list(corpus), add_special_tokens=False)["input_ids"]:
        used.update(ids)
    id_to_tok = {i: t for t, i in vocab.items()}
    keep = {id_to_tok[i] for i in used} | {t for t in vocab if _keeps_char(t)}
    keep -= set(SPECIAL_TOKENS)
    return SPECIAL_TOKENS + sorted(keep, key=lambda t: vocab[t])


def _pca(matrix: np.ndarray, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and projection (``in x dim``) of the top ``dim`` principal components."""
    mean = matrix.mean(axis=0, keepdims=True)
    _, _, vt = np.linalg.svd(matrix - mean, full_matrices=False)
    return mean, vt[:dim].T


def build_student(teacher_dir: str | Path, corpus: list[str], label_names: list[str],
                  cfg: StudentConfig):
    """A fresh student and its pruned tokenizer, embeddings initialised from the teacher's."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, BertConfig, BertTokenizerFast

    teacher_tok = AutoTokenizer.from_pretrained(teacher_dir)
    teacher = AutoModelForSequenceClassification.from_pretrained(teacher_dir)
    pieces = prune_vocab(teacher_tok, corpus)
    tokenizer = BertTokenizerFast(vocab={p: i for i, p in enumerate(pieces)}, do_lower_case=True)
    tokenizer.model_max_length = cfg.max_length

    config = BertConfig(
        vocab_size=len(pieces), hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads, intermediate_size=cfg.intermediate_size,
        max_position_embeddings=max(64, cfg.max_length), num_labels=len(label_names),
        id2label=dict(enumerate(label_names)), label2id={n: i for i, n in enumerate(label_names)},
        hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)
    student = AutoModelForSequenceClassification.from_config(config)

    src = teacher.base_model.embeddings
    t_vocab = teacher_tok.get_vocab()
    rows = src.word_embeddings.weight.detach().numpy()[[t_vocab[p] for p in pieces]]
    mean, proj = _pca(rows, cfg.hidden_size)
    dst = student.base_model.embeddings
    with torch.no_grad():
        dst.word_embeddings.weight.copy_(torch.from_numpy((rows - mean) @ proj))
        n_pos = dst.position_embeddings.weight.shape[0]
        pos = src.position_embeddings.weight.detach().numpy()[:n_pos]
        dst.position_embeddings.weight.copy_(torch.from_numpy((pos - pos.mean(0)) @ proj))
        typ = src.token_type_embeddings.weight.detach().numpy()
        dst.token_type_embeddings.weight.copy_(torch.from_numpy((typ - typ.mean(0)) @ proj))
    log.info("student: %d layers, hidden %d, vocab %d (teacher %d), %.0fk parameters",
             cfg.num_layers, cfg.hidden_size, len(pieces), len(t_vocab), n_params(student) / 1e3)
    return student, tokenizer


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def save_student(model, tokenizer, out_dir: str | Path) -> Path:
    """Save weights (safetensors), constructor args (config.json) and tokenizer."""
    out = Path(out_dir)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


def load_student(folder: str | Path):
    """The one loader for a saved float student: (model, tokenizer)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    return (AutoModelForSequenceClassification.from_pretrained(folder).eval(),
            AutoTokenizer.from_pretrained(folder))


def compatible(folder: str | Path, label_names: list[str], cfg: StudentConfig) -> bool:
    """Whether a saved student can be warm-started for this label set and shape."""
    import json

    p = Path(folder) / "config.json"
    if not p.exists():
        return False
    c = json.loads(p.read_text())
    labels = [c.get("id2label", {}).get(str(i)) for i in range(len(c.get("id2label", {})))]
    return (labels == list(label_names) and c.get("hidden_size") == cfg.hidden_size
            and c.get("num_hidden_layers") == cfg.num_layers and c.get("num_attention_heads") == cfg.num_heads
            and c.get("intermediate_size") == cfg.intermediate_size)
