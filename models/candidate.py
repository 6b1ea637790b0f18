"""Train: the night's candidate, distilled from the lake's teacher labels and exported for the edge."""

from __future__ import annotations

import shutil
from pathlib import Path

from data_contracts.lake import Lake
from edgeloop.config import StudentConfig
from models.relabel import transfer_set
from models.teacher_store import TeacherRef


def train_candidate(cfg: StudentConfig, lake: Lake, ref: TeacherRef, teacher, label_names: list[str],
                    out_dir: Path, champion: tuple[str | None, Path | None] = (None, None), *,
                    threads: int = 0, on_epoch=None) -> dict:
    """Distill a student from the lake's labels by ``ref``; write ``out_dir/{student,edge}``.

    ``teacher`` is the loaded teacher of ``ref`` (it labels the augmented texts and gives the
    sentence vectors); ``champion`` is (version, folder) of the current champion, whose weights
    start the student when ``cfg.warm_start`` and the shapes agree. Returns the training summary.
    """
    from models.distill import distill, prepare_transfer, recipe
    from models.quantize import write_edge_folder
    from models.student import build_student, compatible, load_student, n_params, save_student
    from models.training import set_threads

    set_threads(threads)
    texts, probs, gold = transfer_set(lake, ref, label_names)
    if not texts:
        raise ValueError("the lake holds no teacher-labeled messages: nothing to train on")
    champ_version, champ = champion
    warm = bool(cfg.warm_start and champ and compatible(champ / "student", label_names, cfg))
    if warm:
        model, tokenizer = load_student(champ / "student")
    else:
        model, tokenizer = build_student(ref.folder, texts, label_names, cfg)
    epochs = cfg.warm_start_epochs if warm else cfg.epochs
    n_source = len(texts)  # + teacher-labeled augmented copies and the teacher's sentence vectors
    texts, probs, gold, hidden = prepare_transfer(teacher, texts, probs, gold, cfg)
    history = distill(model, tokenizer, texts, probs, gold, cfg, epochs=epochs, on_epoch=on_epoch,
                      teacher_hidden=hidden)
    shutil.rmtree(out_dir, ignore_errors=True)
    save_student(model, tokenizer, out_dir / "student")
    write_edge_folder(model, tokenizer, out_dir / "edge", cfg.max_length, backend=cfg.quantize)
    return {"folder": str(out_dir), "warm_start_from": champ_version if warm else None,
            "epochs": epochs, "n_train": n_source, "n_augmented": len(texts) - n_source,
            "hidden_distillation": hidden is not None,
            "n_gold": int((gold >= 0).sum()), **recipe(cfg),
            "n_params": n_params(model), "vocab_size": int(model.config.vocab_size),
            "final_loss": history[-1]["loss"], "history": history}
