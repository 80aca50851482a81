"""The error types the CLI renders as one line: user mistakes (exit 2), a diverged run (exit 4),
an interrupted run that saved a checkpoint (exit 130)."""

from __future__ import annotations

import difflib
from typing import Iterable

USER_ERROR_EXIT = 2
GATE_FAILED_EXIT = 3
DIVERGED_EXIT = 4
INTERRUPTED_EXIT = 130  # 128 + SIGINT, the shell's convention


class UserError(Exception):
    """A problem the user can fix (bad input, a missing file, an unknown name).

    The message must name the problem and the fix in one line. The CLI prints it as
    ``error: <message>`` on stderr and exits with code 2, without a traceback.
    """


class DivergedError(Exception):
    """Training met a non-finite loss or gradient (``unlearn.on_nonfinite: stop``).

    The message names the step, the value and what to lower. The CLI prints it as
    ``diverged: <message>`` on stderr and exits with code 4; nothing is saved as a finished run.
    """


class Interrupted(KeyboardInterrupt):
    """SIGINT during a run that writes checkpoints: it stopped after a step and saved it.

    The CLI prints the message and how to resume, and exits with code 130.
    """

    def __init__(self, step: int, checkpoint: str):
        super().__init__(f"interrupted at step {step}; checkpoint saved to {checkpoint}")


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """Return `` (did you mean 'x'?)`` for the closest choice, or an empty string."""
    close = difflib.get_close_matches(str(name), list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def unknown_name(kind: str, name: str, choices: Iterable[str]) -> UserError:
    """A failed registry lookup: names what was asked for and lists what exists."""
    choices = sorted(choices)
    return UserError(
        f"unknown {kind} '{name}'{did_you_mean(name, choices)}; choose one of: {', '.join(choices)}"
    )
