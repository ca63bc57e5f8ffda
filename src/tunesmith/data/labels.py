"""Label sets of classification: the instruction a classifier is trained and asked with, and matching a
free-text answer (a teacher's, over HTTP) to one label."""

from __future__ import annotations

from tunesmith.core.errors import TunesmithError

CLASSIFY_TEMPLATE = "Classify the text as one of: {labels}. Answer with the label only.\n\nText: {text}"


SHORTENED = "…"  # ends a text shortened to fit max_length (data.render.fit_classify_text)


def classify_prompt(text: str, labels: list[str]) -> str:
    return CLASSIFY_TEMPLATE.format(labels=", ".join(labels), text=text)


def shortened_text(text: str, end: int) -> str:
    """``text`` cut at character ``end``, marked as shortened."""
    return text[:end].rstrip() + SHORTENED


QUOTES = "\"'`*“”‘’«»"  # stripped from both ends of an answer


def normalize_label(answer: str, labels: list[str]) -> str | None:
    """The label an answer names, or None. Forgiving only about form (case, whitespace, surrounding
    quotes, trailing punctuation: ``"Positive."`` is positive); nothing else is guessed."""
    wanted = _plain(answer)
    return next((label for label in labels if _plain(label) == wanted), None)


def _plain(text: str) -> str:
    previous = None
    while text != previous:
        previous, text = text, text.strip().strip(QUOTES).rstrip(".!?,;:")
    return " ".join(text.casefold().split())


def check_labels(labels: list[str] | None) -> list[str]:
    """The label set, refused when two labels could not be told apart in an answer."""
    if not labels or len(labels) < 2:
        raise TunesmithError("--task classify needs --labels with at least two labels, e.g. --labels positive,negative")
    seen: dict[str, str] = {}
    for label in labels:
        plain = _plain(label)
        if not plain:
            raise TunesmithError(f"--labels: {label!r} is not a label (empty once quotes and punctuation go)")
        if plain in seen:
            raise TunesmithError(
                f"--labels: {seen[plain]!r} and {label!r} are the same label once case and "
                "punctuation are ignored, so an answer could not tell them apart"
            )
        seen[plain] = label
    return [label.strip() for label in labels]
