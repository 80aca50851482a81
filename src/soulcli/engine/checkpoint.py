"""Checkpoints of a training run, so a killed or interrupted run continues where it stopped.

A run with ``save_every: k`` writes, every k steps, ``step-NNNNNNNN/`` into its checkpoint
folder (:func:`checkpoint_dir`: ``.NAME.ckpt`` beside the output folder ``NAME``, since the
output itself is built in a temporary folder that the next run removes). Each is written with
:func:`~soulcli.data.io.atomic_dir`, so it is complete or absent, and the older ones are
deleted only after it is in place. It holds:

* ``checkpoint.json``: the step, the number of steps of the run, the run's key (a hash of
  its settings: a checkpoint of another recipe or seed is refused) and the time;
* ``state.pt``: the trainable parameters by name (all of them, or only the adapter's: frozen
  ones are the starting model's, rebuilt by the resumed run), the optimizer's
  ``state_dict()`` (for soulcli's optimizers also Sophia's Hessian EMA and the diagnostics
  cadence), the curvature estimator's state (its private generators), the LR scheduler's
  state, what the loop has done (steps, tokens, skipped steps, seconds, the metrics rows) and
  every random state (Python, NumPy, torch CPU, CUDA when present), and the state of the
  loop's step-end hook when it has one (``state_dict()``: the headline curve and the best
  state kept so far, :mod:`soulcli.workflows.tracking`).

The step index is the data position: batches are a plan fixed before training
(:mod:`soulcli.engine.sampling`), so a resumed run skips the first ``step`` of them. Loading is
``torch.load(weights_only=True)``: a checkpoint holds no code.
"""

from __future__ import annotations

import json
import random
import re
import shutil
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from soulcli.data.io import atomic_dir, is_soulcli_output, write_json
from soulcli.errors import UserError

_STEP = re.compile(r"step-(\d{8})")


@dataclass(frozen=True)
class Checkpoints:
    """Where a run keeps its checkpoints, how often it writes one, and which one it resumes."""

    folder: Path
    every: int  # steps between checkpoints; 0: none written (a resumed run may still load one)
    key: str  # the run's settings hash; a checkpoint under another key is refused
    resume_from: Path | None = None  # the checkpoint to continue from (see :func:`find`)


def checkpoint_dir(output: Path) -> Path:
    """The checkpoint folder of the run whose output folder is ``output``."""
    output = Path(output)
    return output.parent / f".{output.name}.ckpt"


def latest(folder: Path) -> Path | None:
    """The complete checkpoint of the highest step in ``folder``, or None."""
    done = [p for p in folder.iterdir() if _STEP.fullmatch(p.name) and is_soulcli_output(p)] \
        if folder.is_dir() else []
    return max(done, key=lambda p: p.name, default=None)


def find(folder: Path, key: str) -> Path:
    """The checkpoint ``--resume`` continues from; a missing one, or one another recipe wrote,
    is a user error."""
    path = latest(folder)
    if path is None:
        raise UserError(f"--resume: no checkpoint in {folder}; run without --resume (set "
                        "save_every to write checkpoints)")
    meta = json.loads((path / "checkpoint.json").read_text())
    if meta["key"] != key:
        raise UserError(f"--resume: the checkpoint {path} was written by another recipe or seed "
                        f"(key {meta['key']}, this run's is {key}); resume with the same recipe and "
                        "--set options, or run without --resume")
    return path


def prepare(output: Path, every: int, key: str, resume: bool,
            distributed: bool = False) -> Checkpoints | None:
    """The checkpoint settings of the run writing ``output``: None without ``save_every`` or
    ``--resume``; with ``resume`` the checkpoint to continue (:func:`find`)."""
    if not (every or resume):
        return None
    if distributed:
        raise UserError("checkpoints (save_every, --resume) are not supported under torchrun yet; "
                        "set save_every=0 and run without --resume, or run in one process")
    folder = checkpoint_dir(output)
    return Checkpoints(folder, every, key, find(folder, key) if resume else None)


def clear(ckpt: Checkpoints) -> None:
    """Remove the checkpoint folder (soulcli's own): the run finished, or starts afresh."""
    shutil.rmtree(ckpt.folder, ignore_errors=True)


def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state(legacy=False)
    np_state["state"]["key"] = np_state["state"]["key"].tolist()
    return {"python": random.getstate(), "numpy": np_state, "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np_state = state["numpy"]
    np_state["state"]["key"] = np.array(np_state["state"]["key"], dtype=np.uint32)
    np.random.set_state(np_state)
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(ckpt: Checkpoints, step: int, total: int, model: torch.nn.Module,
         optimizer: torch.optim.Optimizer, scheduler: Any, curvature: Any,
         loop: dict[str, Any], hook: Any = None) -> Path:
    """Write the checkpoint of ``step`` (see the module docstring), then delete older ones."""
    path = ckpt.folder / f"step-{step:08d}"
    ckpt.folder.mkdir(parents=True, exist_ok=True)
    with atomic_dir(path, overwrite=True) as tmp:
        torch.save({
            "params": {name: p.detach() for name, p in model.named_parameters() if p.requires_grad},
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "curvature": curvature.state_dict() if hasattr(curvature, "state_dict") else None,
            "loop": loop,
            "rng": _rng_state(),
            "hook": hook.state_dict() if hook is not None else None,
        }, tmp / "state.pt")
        write_json(tmp / "checkpoint.json", {"step": step, "steps": total, "key": ckpt.key,
                                             "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    for old in ckpt.folder.iterdir():
        if old != path and _STEP.fullmatch(old.name):
            shutil.rmtree(old, ignore_errors=True)
    return path


def load(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
         curvature: Any, hook: Any = None) -> dict[str, Any]:
    """Restore what :func:`save` wrote into the freshly built components (``hook``: the step-end
    hook whose state was saved); returns the loop's record (``loop``). Call it last before the
    first step: it sets every random state."""
    state = torch.load(path / "state.pt", weights_only=True)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in state["params"].items():
            params[name].copy_(value)
    optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None:
        scheduler.load_state_dict(state["scheduler"])
    if state["curvature"] is not None:
        curvature.load_state_dict(state["curvature"])
    if hook is not None and state.get("hook") is not None:
        hook.load_state_dict(state["hook"])
    _set_rng_state(state["rng"])
    return state["loop"]


@contextmanager
def deferred_sigint(enabled: bool) -> Iterator[threading.Event]:
    """While a run writes checkpoints, a first SIGINT only sets the event (the loop saves at the
    end of the step and stops); the previous handler is back for a second one, and on exit."""
    flag = threading.Event()
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield flag
        return
    previous = signal.getsignal(signal.SIGINT)

    def handler(signum: int, frame: Any) -> None:
        flag.set()
        signal.signal(signal.SIGINT, previous)

    signal.signal(signal.SIGINT, handler)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous)
