"""Train: the night's candidate, distilled from the lake's teacher outputs and exported for the edge."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from data_contracts.lake import Lake
from edgeloop.config import CollabConfig, StudentConfig
from models.teacher_store import TeacherRef


def train_candidate(cfg: StudentConfig, lake: Lake, ref: TeacherRef, teacher, label_names: list[str],
                    out_dir: Path, champion: tuple[str | None, Path | None] = (None, None), *,
                    threads: int = 0, on_epoch=None, full_retrain: bool = False, last_full: str | None = None,
                    night: str | None = None, collab: CollabConfig | None = None) -> dict:
    """Distill a student from the lake's outputs of the teacher ``ref``; write ``out_dir/{student,edge}``.

    ``teacher`` is the loaded teacher of ``ref``: it computes only the sentence vectors and
    augmented copies the lake does not hold yet. ``champion`` is (version, folder) of the current
    champion, whose weights start the student when ``cfg.warm_start`` and the shapes agree. A
    warm-started night trains on the rows the champion has not seen plus a bounded replay
    (:mod:`models.replay`); ``full_retrain``, a new teacher, or ``cfg.full_retrain_every_days``
    after ``last_full`` (the ledger's last full-retrain night, ``night`` being tonight) train on
    every row. Returns the training summary (``training_kind``, row counts, ``seconds`` per step, ...).

    With ``collab`` enabled the calibration slice (``collab.calibration_share``) is left out of the
    rows, and the out-of-scope texts of ``collab.oos_train_key`` are added once per epoch with a
    uniform target (outlier exposure, :func:`models.outliers.with_outliers`).
    """
    from models.collab_data import outlier_training_texts
    from models.distill import distill, recipe, teacher_outputs
    from models.outliers import with_outliers
    from models.quantize import write_edge_folder
    from models.replay import cutoffs, read_mark, select_rows, training_kind, write_mark
    from models.student import build_student, compatible, load_student, n_params, save_student
    from models.training import set_threads
    from models.transfer import teacher_targets

    set_threads(threads)
    clock = [time.perf_counter()]
    seconds: dict[str, float] = {}

    def lap(step: str) -> None:
        now = time.perf_counter()
        seconds[step] = round(now - clock[0], 2)
        clock[0] = now

    champ_version, champ = champion
    warm = bool(cfg.warm_start and champ and compatible(champ / "student", label_names, cfg))
    mark = read_mark(champ / "student") if warm else None
    kind, why = training_kind(cfg, warm, mark, ref.cache_key, full_retrain, last_full, night)
    share = collab.calibration_share if collab is not None and collab.enabled else 0.0
    rows = select_rows(lake, ref.cache_key, cfg, kind, mark, cfg.seed, exclude_share=share)
    if rows.empty:
        raise ValueError("the lake holds no teacher-labeled messages: nothing to train on")
    outliers = outlier_training_texts(collab)
    lap("select_rows")
    if warm:
        model, tokenizer = load_student(champ / "student")
    else:  # the outliers' word pieces belong in a new vocabulary too
        model, tokenizer = build_student(ref.folder, rows["text"].tolist() + outliers, label_names, cfg)
    epochs = cfg.warm_start_epochs if warm else cfg.epochs
    texts, probs, gold, hidden, computed = teacher_targets(lake, ref.cache_key, teacher, rows, label_names, cfg)
    n_transfer = len(texts)
    if outliers:  # the teacher's vectors for them: 100 texts, computed each night rather than stored
        out_hidden = None if hidden is None else teacher_outputs(
            teacher.model, teacher.tokenizer, outliers, getattr(teacher, "max_length", cfg.max_length))[1]
        texts, probs, gold, hidden = with_outliers(texts, probs, gold, hidden, outliers, out_hidden)
    lap("teacher_targets")
    history = distill(model, tokenizer, texts, probs, gold, cfg, epochs=epochs, on_epoch=on_epoch,
                      teacher_hidden=hidden)
    lap("distill")
    roles = rows["role"].value_counts()
    summary = {"training_kind": kind, "training_reason": why, "n_train": len(rows),
               "n_new": int(roles.get("new", 0)), "n_replay": int(roles.get("replay", 0)),
               "n_replay_gold": int(roles.get("gold", 0)), "n_augmented": n_transfer - len(rows),
               "n_outliers": len(texts) - n_transfer, "calibration_share": share,
               "n_rows_trained": len(texts), **computed}
    shutil.rmtree(out_dir, ignore_errors=True)
    save_student(model, tokenizer, out_dir / "student")
    write_mark(out_dir / "student", {**summary, **cutoffs(rows, lake, mark, kind),
                                     "teacher_version": ref.cache_key, "night": night})
    write_edge_folder(model, tokenizer, out_dir / "edge", cfg.max_length, backend=cfg.quantize)
    lap("export")
    return {"folder": str(out_dir), "warm_start_from": champ_version if warm else None,
            "epochs": epochs, **summary, "hidden_distillation": hidden is not None,
            "n_gold": int((gold >= 0).sum()), **recipe(cfg),
            "n_params": n_params(model), "vocab_size": int(model.config.vocab_size),
            "final_loss": history[-1]["loss"], "history": history, "seconds": seconds}
