"""``python -m jaxdiv``: every registered divergence on example distributions, as a table.

A bimodal teacher over 32 classes against four students (the teacher itself, a broad
unimodal student covering both modes, a student sitting on one mode, and a uniform one): the
table shows which divergences are mode covering (large for the one-mode student) and which are
mode seeking (large for the broad student).
"""

import jax.numpy as jnp

import jaxdiv

HYPERPARAMETERS = {
    "alpha_divergence": {"alpha": 0.5},
    "f_divergence": {"f": lambda u: jnp.square(u - 1.0)},  # Pearson chi², as an example f
    "top_k_kl": {"k": 8},
}


def example_logits() -> tuple[jnp.ndarray, jnp.ndarray, list[str]]:
    """Log-densities on a grid: teacher bimodal; students (teacher, broad, one mode, uniform)."""
    x = jnp.linspace(-4.0, 4.0, 32)
    bump = lambda mu, sd: -0.5 * jnp.square((x - mu) / sd) - jnp.log(sd)
    teacher = jnp.logaddexp(bump(-2.0, 0.6), bump(2.0, 0.6))
    students = jnp.stack([teacher, bump(0.0, 2.2), bump(2.0, 0.6), jnp.zeros_like(x)])
    return (
        students,
        jnp.broadcast_to(teacher, students.shape),
        [
            "= teacher",
            "broad (covers both)",
            "one mode",
            "uniform",
        ],
    )


def main() -> None:
    students, teachers, labels = example_logits()
    print("Teacher: two modes at ±2 over 32 classes; one row per divergence D(student, teacher).")
    print()
    print("| divergence | " + " | ".join(labels) + " |")
    print("|---" * (len(labels) + 1) + "|")
    for name in jaxdiv.names():
        values = jaxdiv.get(name)(students, teachers, **HYPERPARAMETERS.get(name, {}))
        print(f"| {name} | " + " | ".join(f"{float(v):.4g}" for v in values) + " |")


if __name__ == "__main__":
    main()
