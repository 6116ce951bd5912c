"""Resolving presets and config files, and ``--config.key=value`` overrides."""

import ast
import difflib
import importlib
import importlib.util
import os
import pkgutil
from pathlib import Path

import ml_collections

from jaxdiv.train import configs


def preset_names() -> tuple[str, ...]:
    """The packaged presets (files in ``train/configs/`` with a ``get_config``)."""
    return tuple(
        sorted(m.name for m in pkgutil.iter_modules(configs.__path__) if m.name != "common")
    )


def get_config(name: str) -> ml_collections.ConfigDict:
    """A preset by name (``"distill_lm"``) or a config file path (``"my_config.py"``).

    Examples:
        >>> from jaxdiv.train import get_config
        >>> get_config("distill_lm").distill.divergence
        'forward_kl'
    """
    if name.endswith(".py"):
        path = Path(name)
        if not path.exists():
            raise FileNotFoundError(f"Config file {name} does not exist.")
        spec = importlib.util.spec_from_file_location(f"jaxdiv_config_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    elif name in preset_names():
        module = importlib.import_module(f"jaxdiv.train.configs.{name}")
    else:
        close = difflib.get_close_matches(name, preset_names(), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(
            f"Unknown config {name!r}{hint}: expected a .py file or one of {list(preset_names())}."
        )
    return module.get_config()


def _parse_value(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text  # a bare string


def apply_overrides(config: ml_collections.ConfigDict, overrides: list[str]):
    """Applies ``key.sub=value`` strings (values parsed as Python literals when possible)."""
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"Override {item!r} must look like key=value.")
        path, text = item.split("=", 1)
        *parents, leaf = path.split(".")
        node = config
        for depth, key in enumerate(parents):
            if key not in node:
                raise ValueError(_no_key(item, parents[:depth], key, node))
            node = node[key]
        # New keys are allowed only in the free-form option dicts: `task` (the task's own
        # options, e.g. task.files) and any `kwargs` (task or divergence keyword arguments).
        if leaf not in node and parents not in (["task"],) and parents[-1:] != ["kwargs"]:
            raise ValueError(_no_key(item, parents, leaf, node))
        value = _parse_value(text)
        if isinstance(value, list):
            value = tuple(value)
        try:
            node[leaf] = value
        except TypeError as e:
            raise ValueError(f"Override {item!r}: {e}") from None
    return config


def _no_key(item: str, parents: list[str], key: str, node) -> str:
    """ "config has no key 'a.b'; did you mean 'a.c'?" for an override naming a missing key."""
    path = ".".join([*parents, key])
    close = difflib.get_close_matches(key, [str(k) for k in node.keys()], n=1)
    hint = f"; did you mean {'.'.join([*parents, close[0]])!r}?" if close else "."
    return f"override {item!r}: the config has no key {path!r}{hint}"


def smoke_mode() -> bool:
    """``JAXDIV_SMOKE=1`` shrinks every run to a few steps (tests, notebooks, CI)."""
    return os.environ.get("JAXDIV_SMOKE", "") not in ("", "0")


def smoke_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Shrinks a preset in place to seconds: 4 steps of 8 rows of 32 tokens, evaluated on one
    batch, checkpointed every 2 steps (the code path of the full run, not its result)."""
    config.steps, config.log_every, config.eval_every = 4, 2, 2
    config.checkpoint_every, config.eval_batches, config.batch_size = 2, 1, 8
    if config.task.name != "digits":  # digits images have a fixed length
        config.task.kwargs = dict(config.task.get("kwargs") or {}, seq_len=32)
    config.optimizer.warmup_steps = 1
    config.progress = False
    return config
