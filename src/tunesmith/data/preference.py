"""Preference pairs for DPO, in the two line formats people bring: {"prompt", "chosen", "rejected"} (TRL's) and
OpenAI's DPO fine-tuning format:

    {"input": {"messages": [...ending with a user turn], "tools"?: ...},
     "preferred_output": [{"role": "assistant", "content": "..."}],
     "non_preferred_output": [{"role": "assistant", "content": "..."}]}

Both become an Example with the prompt's messages, ``chosen`` and ``rejected``; every error names the line and
the field it is in.
"""

from __future__ import annotations

from tunesmith.data.messages import check_prompt_messages, make_message
from tunesmith.data.records import Example, Issue

OPENAI_HINT = (
    'an OpenAI preference line looks like {"input": {"messages": [...]}, "preferred_output": '
    '[{"role": "assistant", "content": "..."}], "non_preferred_output": [{"role": "assistant", "content": "..."}]}'
)


def parse_preference(obj: dict, line: int, name: str, issues: list[Issue]) -> Example | None:
    missing = sorted({"prompt", "chosen", "rejected"} - set(obj))
    if missing:
        issues.append(
            Issue.error(
                name,
                line,
                ", ".join(missing),
                "missing key(s)",
                'a preference line looks like {"prompt": ..., "chosen": ..., "rejected": ...}',
            )
        )
        return None
    before = len(issues)
    for key in ("chosen", "rejected"):
        if not isinstance(obj[key], str):
            issues.append(
                Issue.error(
                    name, line, key, f"must be a string, got {type(obj[key]).__name__}", "give the answer's text"
                )
            )
        elif not obj[key].strip():
            issues.append(Issue.error(name, line, key, "empty answer", f"write the {key} answer or drop the line"))
    prompt = obj["prompt"]
    messages = None
    if isinstance(prompt, str):
        if prompt.strip():
            messages = [make_message("user", prompt)]
        else:
            issues.append(Issue.error(name, line, "prompt", "empty prompt", "write the prompt or drop the line"))
    elif isinstance(prompt, list):
        messages = check_prompt_messages(prompt, line, name, issues)
    else:
        issues.append(
            Issue.error(
                name,
                line,
                "prompt",
                f"must be a string or a list of messages, got {type(prompt).__name__}",
                'use "prompt": "..." or "prompt": [{"role": "user", ...}]',
            )
        )
    if len(issues) > before or messages is None:
        return None
    if obj["chosen"].strip() == obj["rejected"].strip():
        issues.append(
            Issue.warning(
                name,
                line,
                "rejected",
                "chosen and rejected are the same answer",
                "a pair teaches nothing unless the answers differ; fix or drop the line",
            )
        )
    return Example(line=line, messages=messages, chosen=obj["chosen"], rejected=obj["rejected"])


def parse_openai_preference(obj: dict, line: int, name: str, issues: list[Issue]) -> Example | None:
    missing = sorted({"input", "preferred_output", "non_preferred_output"} - set(obj))
    if missing:
        issues.append(Issue.error(name, line, ", ".join(missing), "missing key(s)", OPENAI_HINT))
        return None
    before = len(issues)
    given = obj["input"]
    messages = None
    if not isinstance(given, dict) or "messages" not in given:
        issues.append(Issue.error(name, line, "input", 'must be an object with "messages"', OPENAI_HINT))
    else:
        if given.get("tools"):
            issues.append(
                Issue.error(
                    name,
                    line,
                    "input.tools",
                    "tools in a preference pair are not supported",
                    "DPO here trains on text answers; drop the pair or its tools",
                )
            )
        messages = check_prompt_messages(given["messages"], line, name, issues, field="input.messages")
    answers = {
        key: _answer_text(obj[key], key, line, name, issues) for key in ("preferred_output", "non_preferred_output")
    }
    if len(issues) > before or messages is None or None in answers.values():
        return None
    chosen, rejected = answers["preferred_output"], answers["non_preferred_output"]
    assert chosen is not None and rejected is not None
    if chosen.strip() == rejected.strip():
        issues.append(
            Issue.warning(
                name,
                line,
                "non_preferred_output",
                "preferred and non-preferred are the same answer",
                "a pair teaches nothing unless the answers differ; fix or drop the line",
            )
        )
    return Example(line=line, messages=messages, chosen=chosen, rejected=rejected)


def _answer_text(output: object, key: str, line: int, name: str, issues: list[Issue]) -> str | None:
    """The text of ``[{"role": "assistant", "content": "..."}]``: one assistant message with text content."""
    if not isinstance(output, list) or len(output) != 1 or not isinstance(output[0], dict):
        issues.append(Issue.error(name, line, key, "must be a list of one assistant message", OPENAI_HINT))
        return None
    message = output[0]
    if message.get("role") != "assistant":
        issues.append(
            Issue.error(name, line, f"{key}[0].role", f"must be assistant, got {message.get('role')!r}", OPENAI_HINT)
        )
        return None
    if message.get("tool_calls"):
        issues.append(
            Issue.error(
                name,
                line,
                f"{key}[0].tool_calls",
                "tool calls in a preference pair are not supported",
                "DPO here trains on text answers",
            )
        )
        return None
    content = message.get("content")
    if not isinstance(content, str) or not content.strip():
        issues.append(
            Issue.error(
                name, line, f"{key}[0].content", "must be the answer's text", "write the answer or drop the line"
            )
        )
        return None
    return content
