"""SinKD's mode argument on a 1-D toy: one Gaussian student fit to a bimodal teacher.

    python -m benchmarks.bimodal            # prints the fits of every loss from 3 inits

The teacher is a two-mode mixture on a grid of bins; the student is one discretised Gaussian
(logits ``−(x − μ)² / 2σ²`` over the same bins), fit by full-batch Adam on ``(μ, log σ)``
under each loss, student logits first, teacher logits second:

- ``forward KL``, ``reverse KL``, ``JS``: ``jaxdiv.forward_kl``, ``reverse_kl``,
  ``jensen_shannon`` of the two rows;
- ``SinKD (jaxdiv)``: ``jaxdiv.sinkhorn_kd`` as the library (and the SinKD code) defines it:
  the cost is between *rows* of a batch (W_ij = Σ_c |p_s,ic − p_t,jc|), not between bins, so
  with the toy's one row it is W_11 = Σ_c |p_s,c − p_t,c|, twice the total variation;
- ``W1 over bins``: the optimal transport cost between the two histograms with the ground
  cost |x_i − x_j| between bins, which the Sinkhorn distance with that cost approaches as
  ε → 0: the reading of "Sinkhorn distance" under which mass moves along the x axis. Not a
  jaxdiv function (SinKD has no cost between classes): the toy's own, exact in 1-D.

Each fit reports μ, σ, the student's mass on each teacher mode (a window of ±2 mode widths)
and off the modes. Deterministic: the initialisation is drawn from ``seed``.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxdiv

GRID = np.linspace(-6.0, 6.0, 121)  # bin centres, spacing 0.1
MODES = (-2.0, 2.0)  # teacher mode centres (equal weights)
MODE_WIDTH = 0.6  # teacher mode standard deviation
WINDOW = 2 * MODE_WIDTH  # a mode's bins: |x − centre| ≤ WINDOW (95% of its mass)


def teacher_logits() -> jax.Array:
    """Log-density of the equal mixture of N(m, MODE_WIDTH²), m in MODES, on GRID."""
    x = jnp.asarray(GRID, jnp.float32)
    parts = jnp.stack([-0.5 * ((x - m) / MODE_WIDTH) ** 2 for m in MODES])
    return jax.nn.logsumexp(parts, axis=0)  # [V]


def student_logits(params: jax.Array) -> jax.Array:
    """Logits of the discretised Gaussian N(μ, σ²) on GRID, params = (μ, log σ)."""
    mu, log_sigma = params[0], params[1]
    x = jnp.asarray(GRID, jnp.float32)
    return -0.5 * ((x - mu) / jnp.exp(log_sigma)) ** 2  # [V]


def wasserstein_1(student: jax.Array, teacher: jax.Array) -> jax.Array:
    """W1 between softmax(student) and softmax(teacher) on GRID with ground cost |x_i − x_j|:
    in 1-D the optimal transport cost is Σ_i |F_s(x_i) − F_t(x_i)| Δx (F the CDFs), the
    ε → 0 limit of the Sinkhorn distance with that cost."""
    p_s, p_t = jax.nn.softmax(student), jax.nn.softmax(teacher)  # [V]
    step = float(GRID[1] - GRID[0])
    return jnp.sum(jnp.abs(jnp.cumsum(p_s - p_t))[:-1]) * step


LOSSES = {
    "forward KL": jaxdiv.forward_kl,
    "reverse KL": jaxdiv.reverse_kl,
    "JS": jaxdiv.jensen_shannon,
    "SinKD (jaxdiv)": lambda s, t: jaxdiv.sinkhorn_kd(s[None], t[None], temperature=1.0),
    "W1 over bins": wasserstein_1,
}


def initial_params(seed: int) -> np.ndarray:
    """(μ0, log σ0): μ0 uniform on [−4, 4], σ0 log-uniform on [0.3, 3], from ``seed``."""
    rng = np.random.default_rng(seed)
    return np.array([rng.uniform(-4.0, 4.0), np.log(rng.uniform(0.3, 3.0))], np.float32)


@functools.partial(jax.jit, static_argnames=("loss_name", "steps"))
def fit(params: jax.Array, *, loss_name: str, steps: int, lr: float = 0.05):
    """(params, final loss) after ``steps`` of Adam on ``loss(student(params), teacher)``."""
    loss_fn, target = LOSSES[loss_name], teacher_logits()
    tx = optax.adam(lr)

    def objective(p):
        return loss_fn(student_logits(p), target)

    def step(carry, _):
        p, state = carry
        grads = jax.grad(objective)(p)
        updates, state = tx.update(grads, state, p)
        return (optax.apply_updates(p, updates), state), None

    (params, _), _ = jax.lax.scan(step, (params, tx.init(params)), None, steps)
    return params, objective(params)


def mode_masses(logits: jax.Array) -> tuple[float, float]:
    """The mass of softmax(logits) within ±WINDOW of each teacher mode."""
    p = np.asarray(jax.nn.softmax(logits), np.float64)
    return tuple(float(p[np.abs(GRID - m) <= WINDOW].sum()) for m in MODES)


def measure(seed: int, quick: bool = False) -> dict[str, dict[str, float]]:
    """Every loss's fit from the initialisation of ``seed``: μ, σ, mode masses, off-mode mass;
    ``value`` is the smaller mode mass (≈ 0.5 covers both modes, ≈ 0 misses one)."""
    start = initial_params(seed)
    out = {}
    for name in LOSSES:
        params, loss = fit(jnp.asarray(start), loss_name=name, steps=50 if quick else 1000)
        left, right = mode_masses(student_logits(params))
        out[name] = {
            "value": min(left, right),
            "loss": float(loss),
            "mu": float(params[0]),
            "sigma": float(np.exp(params[1])),
            "left": left,
            "right": right,
            "off_modes": 1.0 - left - right,
            "mu0": float(start[0]),
            "sigma0": float(np.exp(start[1])),
        }
    return out


def figure(path, seeds: int, quick: bool = False) -> None:
    """One panel per loss: the teacher and the fitted student from each seed's init (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    teacher = np.asarray(jax.nn.softmax(teacher_logits()))
    fig, axes = plt.subplots(1, len(LOSSES), figsize=(3.2 * len(LOSSES), 3), sharey=True, dpi=100)
    for ax, name in zip(axes, LOSSES, strict=True):
        ax.fill_between(GRID, teacher, color="0.8", label="teacher")
        for seed in range(seeds):
            start = jnp.asarray(initial_params(seed))
            params, _ = fit(start, loss_name=name, steps=50 if quick else 1000)
            student = np.asarray(jax.nn.softmax(student_logits(params)))
            mu0, sigma0 = float(start[0]), float(np.exp(start[1]))
            ax.plot(GRID, student, label=f"init μ={mu0:.1f}, σ={sigma0:.1f}")
        ax.set(title=name, xlabel="x (bin)")
    axes[0].set_ylabel("probability per bin")
    axes[-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


if __name__ == "__main__":
    for seed in range(3):
        for name, row in measure(seed).items():
            print(seed, f"{name:20s}", {k: round(v, 3) for k, v in row.items()})
