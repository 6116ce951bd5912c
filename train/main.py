"""Command line: ``python -m jaxdiv.train`` / ``jaxdiv-train`` (the only place with flags).

jaxdiv-train                                   # the main job (teacher + distilled students)
jaxdiv-train --config distill_lm --workdir runs/x --config.distill.divergence=reverse_kl
jaxdiv-train --config my_config.py --workdir runs/y --config.steps=1000
"""

import argparse
import os
import sys

from jaxdiv.train.config import apply_overrides, get_config, preset_names

EPILOG = """jobs:
  (no --config)   the main job: pre-train a teacher on the Python docs text, distill students
                  with forward KL, reverse KL, JSD and SinKD+KL, print a comparison table
presets (--config NAME, or a path to a .py file defining get_config()):
  {presets}
overrides: --config.KEY=VALUE (nested keys with dots; values are Python literals), e.g.
  --config.steps=500 --config.mesh.data=2 --config.distill.kwargs.beta=0.3
re-running with the same --workdir resumes from its latest checkpoint; SIGTERM saves and exits 0.
JAXDIV_SMOKE=1 shrinks the main job to a few steps.
"""


def parse(argv):
    parser = argparse.ArgumentParser(
        prog="jaxdiv-train",
        description="Train and distill sequence models with jaxdiv.",
        epilog=EPILOG.format(presets=", ".join(preset_names())),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", help="preset name or config .py file (default: main job)")
    parser.add_argument("--workdir", help="run directory (default: runs/<preset> or runs/main)")
    args, rest = parser.parse_known_args(argv)
    overrides = []
    for item in rest:
        if not item.startswith("--config."):
            parser.error(f"unrecognized argument {item!r} (overrides look like --config.KEY=VALUE)")
        overrides.append(item[len("--config.") :])
    return args, overrides


def main(argv=None) -> int:
    """Runs the CLI; a config or input error ends it with one line on stderr and exit code 2
    (``JAXDIV_TRACEBACK=1`` shows the traceback instead)."""
    try:
        return _main(argv)
    except (ValueError, TypeError, FileNotFoundError) as e:
        if os.environ.get("JAXDIV_TRACEBACK"):
            raise
        print(f"jaxdiv-train: error: {e}", file=sys.stderr)
        return 2


def _main(argv) -> int:
    args, overrides = parse(sys.argv[1:] if argv is None else argv)
    from jaxdiv.train.job import main_job
    from jaxdiv.train.trainer import run

    if args.config is None:
        if overrides:
            raise SystemExit("--config.KEY overrides need a --config preset or file.")
        main_job(args.workdir or "runs/main")
        return 0
    config = apply_overrides(get_config(args.config), overrides)
    name = args.config[:-3].split("/")[-1] if args.config.endswith(".py") else args.config
    result = run(config, args.workdir or f"runs/{name}")
    import jax

    if jax.process_index() != 0:
        return 0
    status = "preempted: checkpoint saved" if result["preempted"] else "done"
    print(
        f"[jaxdiv] {status} at step {result['step']}: "
        + ", ".join(f"{k}={v:.4g}" for k, v in result.items() if isinstance(v, float))
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
