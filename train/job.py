"""The main job: pre-train a teacher LM, distill students with several divergences, compare.

``jaxdiv-train`` with no arguments runs :func:`main_job`: a byte-level teacher on the Python
documentation text, then students of the same (smaller) architecture distilled with forward
KL, reverse KL, Jensen–Shannon and SinKD + forward KL, plus a student trained on the data
alone, and a comparison table of held-out cross-entropy, bits per byte, divergence to the
teacher and tokens/s. Every run lives in its own workdir under ``workdir`` and resumes.
"""

import json
from pathlib import Path

from jaxdiv.train.config import get_config, smoke_config, smoke_mode
from jaxdiv.train.metrics import format_table
from jaxdiv.train.trainer import run

STUDENTS = {
    "data only": {"divergence": None, "weight": 0.0, "task_weight": 1.0},
    "forward KL": {"divergence": "forward_kl"},
    "reverse KL": {"divergence": "reverse_kl"},
    "Jensen-Shannon": {"divergence": "jensen_shannon"},
    # SinKD with the paper's 0.001 weight (its value grows with the rows compared: 64 here).
    "SinKD + forward KL": {"divergence": "forward_kl", "sinkhorn_weight": 0.001},
}


def main_job(workdir="runs/main", *, smoke: bool | None = None) -> list[dict]:
    """Runs the teacher and every student in ``STUDENTS``; prints and returns the table."""
    smoke = smoke_mode() if smoke is None else smoke
    workdir = Path(workdir)
    teacher = get_config("pretrain_lm")
    if smoke:
        teacher = smoke_config(teacher)
    print(
        f"[jaxdiv] teacher: {teacher.model.mixer} d_model={teacher.model.d_model}, "
        f"{teacher.steps} steps -> {workdir / 'teacher'}"
    )
    teacher_metrics = run(teacher, workdir / "teacher")
    rows = [_row("teacher", teacher_metrics)]
    for name, overrides in STUDENTS.items():
        config = get_config("distill_lm")
        if smoke:
            config = smoke_config(config)
        config.distill.teacher = str(workdir / "teacher")
        for key, value in overrides.items():
            config.distill[key] = value
        slug = name.lower().replace(" ", "_").replace("+", "plus").replace("-", "_")
        print(f"[jaxdiv] student '{name}' -> {workdir / slug}")
        rows.append(_row(name, run(config, workdir / slug)))
    table = format_table(
        rows, ["model", "eval CE (nats)", "bits/byte", "KL to teacher", "tokens/s", "MFU"]
    )
    print("\n" + table)
    (workdir / "summary.md").write_text(table + "\n")
    (workdir / "summary.json").write_text(json.dumps(rows, indent=2))
    return rows


def _row(name: str, metrics: dict) -> dict:
    return {
        "model": name,
        "eval CE (nats)": metrics.get("eval_loss"),
        "bits/byte": metrics.get("eval_bits_per_byte"),
        "KL to teacher": metrics.get("eval_kl_to_teacher"),
        "tokens/s": metrics.get("tokens_per_second"),
        "MFU": metrics.get("mfu"),
    }
