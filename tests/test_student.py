"""Student construction and distillation: pruned vocabulary, PCA init, losses, augmentation.

A tiny BERT "teacher" (hidden 48, WordPiece vocabulary trained on a few shop messages) keeps
these fast; the [UNK] check uses the real MiniLM tokenizer on real golden texts.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgeloop.config import StudentConfig

LABELS = ["track_order", "get_refund", "cancel_order"]
CORPUS = ["where is my order 1137", "track my package please", "when will my order arrive",
          "i want a refund", "give me my money back", "refund the payment please",
          "cancel my order", "please cancel the order now", "stop the order hello"]
TINY = StudentConfig(hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32, max_length=24,
                     epochs=2, batch_size=4, augment_copies=1, hidden_weight=1.0)


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    """A saved tiny sequence classifier with a fast WordPiece tokenizer."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors, trainers
    from tokenizers.models import WordPiece
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    letters = list("abcdefghijklmnopqrstuvwxyz0123456789")
    tok.train_from_iterator(CORPUS, trainers.WordPieceTrainer(vocab_size=200, special_tokens=specials,
                                                              initial_alphabet=letters))
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))])
    fast = BertTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                             sep_token="[SEP]", mask_token="[MASK]", do_lower_case=True)
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(
        vocab_size=tok.get_vocab_size(), hidden_size=48, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=64, num_labels=len(LABELS),
        id2label=dict(enumerate(LABELS)), label2id={n: i for i, n in enumerate(LABELS)}))
    out = tmp_path_factory.mktemp("teacher")
    model.save_pretrained(out)
    fast.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def student(teacher_dir):
    from models.student import build_student

    return build_student(teacher_dir, CORPUS, LABELS, TINY)


# ---- vocabulary ---------------------------------------------------------------------------------

def test_pruned_vocab_never_turns_unseen_golden_words_into_unk():
    """Built from the seed only, the pruned vocabulary still spells every golden word."""
    from transformers import AutoTokenizer, BertTokenizerFast

    from data_contracts.datasets import load_split
    from edgeloop.config import DatasetConfig
    from models.evaluate import golden_texts
    from models.student import prune_vocab
    from models.teacher import base_model_path
    from edgeloop.config import TeacherConfig

    split = load_split(DatasetConfig())
    teacher_tok = AutoTokenizer.from_pretrained(base_model_path(TeacherConfig()))
    seed = split.seed["text"].tolist()[:300]
    pieces = prune_vocab(teacher_tok, seed)
    assert pieces[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert len(pieces) < teacher_tok.vocab_size / 10
    tok = BertTokenizerFast(vocab={p: i for i, p in enumerate(pieces)}, do_lower_case=True)
    texts, _ = golden_texts(split)
    unseen = {w for t in texts for w in t.lower().split()} - {w for t in seed for w in t.lower().split()}
    assert unseen, "the check needs golden words the seed never used"
    unk = tok.convert_tokens_to_ids("[UNK]")
    bad = [t for t in texts if unk in tok(t)["input_ids"]]
    assert not bad, f"{len(bad)} golden texts get [UNK], e.g. {bad[:3]}"


# ---- PCA init -----------------------------------------------------------------------------------

def test_pca_gives_orthonormal_projection():
    from models.student import _pca

    rng = np.random.default_rng(0)
    m = rng.normal(size=(50, 12))
    mean, proj = _pca(m, 4)
    assert mean.shape == (1, 12) and proj.shape == (12, 4)
    np.testing.assert_allclose(proj.T @ proj, np.eye(4), atol=1e-6)


def test_student_embeddings_are_pca_of_the_teachers(teacher_dir, student):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model, tok = student
    emb = model.base_model.embeddings
    vocab = tok.get_vocab()
    assert emb.word_embeddings.weight.shape == (len(vocab), TINY.hidden_size)
    assert emb.position_embeddings.weight.shape == (64, TINY.hidden_size)
    assert emb.token_type_embeddings.weight.shape[1] == TINY.hidden_size
    assert model.config.num_hidden_layers == 1 and model.config.num_labels == len(LABELS)
    # Centered projection: the rows average to zero, and their distances follow the teacher's.
    w = emb.word_embeddings.weight.detach().numpy()
    np.testing.assert_allclose(w.mean(0), 0, atol=1e-5)
    teacher = AutoModelForSequenceClassification.from_pretrained(teacher_dir)
    t_vocab = AutoTokenizer.from_pretrained(teacher_dir).get_vocab()
    pieces = sorted(vocab, key=vocab.get)
    rows = teacher.base_model.embeddings.word_embeddings.weight.detach().numpy()[[t_vocab[p] for p in pieces]]
    assert np.linalg.norm(w, axis=1).max() <= np.linalg.norm(rows - rows.mean(0), axis=1).max() + 1e-5


# ---- losses ---------------------------------------------------------------------------------------

def test_kd_is_zero_when_student_matches_teacher():
    from models.distill import distillation_loss

    logits = torch.randn(6, 5)
    probs = torch.softmax(logits, dim=-1)
    _, parts = distillation_loss(logits, probs, torch.full((6,), -1), temperature=3.0, alpha=0.7)
    assert parts["kd"] == pytest.approx(0.0, abs=1e-5)
    _, parts = distillation_loss(logits + torch.randn(6, 5), probs, torch.full((6,), -1), 3.0, 0.7)
    assert parts["kd"] > 1e-3


def test_ce_ignores_rows_without_gold():
    from models.distill import distillation_loss

    torch.manual_seed(1)
    logits = torch.randn(4, 3)
    probs = torch.softmax(torch.randn(4, 3), dim=-1)
    gold = torch.tensor([0, -1, 2, -1])
    _, a = distillation_loss(logits, probs, gold, 2.0, 0.5)
    changed = logits.clone()
    changed[[1, 3]] += 10 * torch.randn(2, 3)  # rows without gold: CE must not move
    _, b = distillation_loss(changed, probs, gold, 2.0, 0.5)
    assert a["ce"] == pytest.approx(b["ce"])
    loss, parts = distillation_loss(logits, probs, torch.full((4,), -1), 2.0, 0.5)
    assert parts["ce"] == 0.0 and float(loss) == pytest.approx(0.5 * parts["kd"], rel=1e-5)


def test_hidden_loss_is_zero_for_aligned_vectors_and_pooling_skips_padding():
    from models.distill import hidden_loss, mean_pool

    proj = torch.nn.Linear(4, 4, bias=False)
    with torch.no_grad():
        proj.weight.copy_(torch.eye(4))
    v = torch.randn(3, 4)
    with torch.no_grad():
        assert float(hidden_loss(v, 2 * v, proj)) == pytest.approx(0.0, abs=1e-6)
    h = torch.randn(2, 5, 4)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    torch.testing.assert_close(mean_pool(h, mask)[0], h[0, :3].mean(0))


# ---- augmentation and the transfer set ---------------------------------------------------------

def test_augment_is_deterministic_new_and_bounded():
    from models.augment import augment_texts

    a = augment_texts(CORPUS, copies=3, seed=5)
    assert a == augment_texts(CORPUS, copies=3, seed=5)
    assert not set(a) & set(CORPUS) and len(a) == len(set(a))
    assert len(augment_texts(CORPUS, copies=3, seed=5, max_rows=4)) == 4
    assert augment_texts(CORPUS, copies=0) == []


def test_augmented_rows_are_labeled_by_the_teacher_not_copied(teacher_dir):
    from models.distill import prepare_transfer
    from models.teacher import LocalTeacher

    teacher = LocalTeacher(teacher_dir, max_length=24)
    probs = np.tile(np.array([[1.0, 0.0, 0.0]], np.float32), (len(CORPUS), 1))  # source labels: all class 0
    gold = np.zeros(len(CORPUS), np.int64)
    texts, p, g, hidden = prepare_transfer(teacher, CORPUS, probs, gold, TINY)
    extra = texts[len(CORPUS):]
    assert extra and (g[len(CORPUS):] == -1).all()
    np.testing.assert_allclose(p[len(CORPUS):], teacher.predict_proba(extra), atol=1e-5)
    assert hidden.shape == (len(texts), 48)


def test_distill_runs_and_warm_start_round_trips(tmp_path, teacher_dir):
    from models.distill import distill, prepare_transfer
    from models.student import build_student, compatible, load_student, save_student
    from models.teacher import LocalTeacher

    model, tok = build_student(teacher_dir, CORPUS, LABELS, TINY)
    teacher = LocalTeacher(teacher_dir, max_length=24)
    gold = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2])
    texts, probs, g, hidden = prepare_transfer(teacher, CORPUS, teacher.predict_proba(CORPUS), gold, TINY)
    history = distill(model, tok, texts, probs, g, TINY, teacher_hidden=hidden)
    assert len(history) == TINY.epochs and "hidden" in history[-1]["extra"]
    save_student(model, tok, tmp_path / "s")
    assert compatible(tmp_path / "s", LABELS, TINY)
    assert not compatible(tmp_path / "s", LABELS[::-1], TINY)
    assert not compatible(tmp_path / "s", LABELS, TINY.model_copy(update={"hidden_size": 32, "num_heads": 2}))
    again, tok2 = load_student(tmp_path / "s")
    enc = tok(CORPUS, padding=True, return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(again(**enc).logits, model.eval()(**enc).logits)
    assert tok2.get_vocab() == tok.get_vocab()
