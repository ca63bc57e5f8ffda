"""`tunesmith review` in a terminal: show each pending prompt and the model's answer, read a key.

The terminal I/O only; what is pending and how a verdict is stored is ``feedback.session``. Input
is read line by line with ``input()``, so it works the same when stdin is a pipe (the tests drive it
that way): end of input quits cleanly, like ``q``.
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from rich.console import Console
from rich.panel import Panel
from rich.text import Text

from tunesmith.core.errors import TunesmithError
from tunesmith.feedback.session import ReviewPrompt, ReviewSession, answer
from tunesmith.inference.loaded import load

QUESTION = "[g]ood / [b]ad / [s]kip / [q]uit: "
CORRECTION = "correction (end a line with \\ to go on to the next line): "
CONTINUATION = "... "
Choice = Literal["good", "bad", "skip", "quit"]
KEYS: dict[str, Choice] = {
    "g": "good",
    "good": "good",
    "b": "bad",
    "bad": "bad",
    "s": "skip",
    "skip": "skip",
    "q": "quit",
    "quit": "quit",
}
Read = Callable[[str], str]


def terminal_read(question: str) -> str:
    """``input()``, echoing the answer when stdin is not a terminal, so that a piped session's
    transcript reads like a typed one (and the next output starts on a line of its own)."""
    try:
        text = input(question)
    except EOFError:
        print()
        raise
    if not sys.stdin.isatty():
        print(text)
    return text


class _Quit(Exception):
    """End of input or ``q``: stop asking, keep what is recorded."""


def review_in_terminal(
    session: ReviewSession,
    model_ref: str,
    max_tokens: int,
    resume_command: str,
    console: Console,
    read: Read = terminal_read,
) -> int:
    """Review every pending prompt of ``session``; 0 when done or quit, 130 on Ctrl-C."""
    for warning in session.warnings:
        console.print(Text(str(warning), style="yellow"))
    start = session.progress()
    pending = session.pending()
    if not pending:
        console.print(
            f"All {start.total} prompt(s) of {session.prompts_path} have a review in {session.out_path}.",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
        _next_step(session, console)
        return 0
    console.print(f"{start.done} of {start.total} prompt(s) reviewed, {start.remaining} to go.")
    skipped = 0
    try:
        with console.status(f"loading {model_ref}"):
            loaded = load(model_ref)
        for number, prompt in enumerate(pending, start=1):
            if prompt.key in session.done_keys:  # recorded meanwhile by another session on this file
                continue
            _show_prompt(prompt, f"{number}/{len(pending)}", console)
            with console.status("generating"):
                response = answer(loaded, prompt, max_tokens)
            console.print(
                Panel(
                    Text(response if response.strip() else "(empty answer)"),
                    title="answer",
                    title_align="left",
                    border_style="cyan",
                )
            )
            if not _review_one(session, prompt, response, console, read):
                skipped += 1
    except _Quit:
        pass
    except KeyboardInterrupt:
        console.print()
        console.print(
            f"interrupted: every review recorded so far is in {session.out_path}",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
        _summary(session, skipped, resume_command, console)
        return 130
    _summary(session, skipped, resume_command, console)
    return 0


def _review_one(session: ReviewSession, prompt: ReviewPrompt, response: str, console: Console, read: Read) -> bool:
    """Ask until the answer is recorded (True) or skipped (False); raises ``_Quit``."""
    while True:
        choice = KEYS.get(_read(read, QUESTION).strip().lower())
        if choice is None:
            console.print("type g, b, s or q and press Enter")
            continue
        if choice == "quit":
            raise _Quit
        if choice == "skip":
            return False
        correction = _read_correction(console, read) if choice == "bad" else None
        try:
            session.record(prompt, response, choice, correction)
        except TunesmithError as problem:  # e.g. an empty answer cannot be good
            console.print(Text(f"not recorded: {problem}", style="red"))
            continue
        done = session.progress()
        console.print(f"recorded {choice}; {done.done} of {done.total} reviewed")
        return True


def _read_correction(console: Console, read: Read) -> str:
    while True:
        lines = [_read(read, CORRECTION)]
        while lines[-1].endswith("\\"):
            lines[-1] = lines[-1][:-1]
            lines.append(_read(read, CONTINUATION))
        correction = "\n".join(lines)
        if correction.strip():
            return correction
        console.print("the correction is empty: type the right answer (Ctrl-D quits)")


def _read(read: Read, question: str) -> str:
    try:
        return read(question)
    except EOFError:
        raise _Quit from None


def _show_prompt(prompt: ReviewPrompt, counter: str, console: Console) -> None:
    if isinstance(prompt.prompt, str):
        body = Text(prompt.prompt)
    else:
        body = Text()
        for index, message in enumerate(prompt.prompt):
            body.append(("\n" if index else "") + f"{message['role']}: ", style="bold")
            body.append(message["content"])
    console.print(Panel(body, title=f"prompt {counter} (line {prompt.line})", title_align="left"))


def _summary(session: ReviewSession, skipped: int, resume_command: str, console: Console) -> None:
    recorded = session.recorded
    bad = sum(1 for record in recorded if record.verdict == "bad")
    progress = session.progress()
    console.print(
        f"this session: {len(recorded)} recorded ({len(recorded) - bad} good, {bad} bad), "
        f"{skipped} skipped; {progress.done} of {progress.total} reviewed, {progress.remaining} to go"
    )
    if progress.remaining:
        console.print(f"resume with: {resume_command}", soft_wrap=True, markup=False, highlight=False)
    else:
        _next_step(session, console)


def _next_step(session: ReviewSession, console: Console) -> None:
    out = session.out_path
    folder = out.with_name(f"{out.stem}-training")
    console.print(
        f"next: tunesmith data from-corrections {_quote(out)} --out {_quote(folder)}",
        soft_wrap=True,
        markup=False,
        highlight=False,
    )


def _quote(path: Path) -> str:
    return shlex.quote(str(path))
