"""Checking a conversation: roles and their order, content (a string or OpenAI text parts), weights, and,
on chat lines, the tool calls and tool messages of function calling (checked in ``tools``). Every broken
rule is an error naming the message (``messages[2].content``)."""

from __future__ import annotations

from tunesmith.data.records import Issue
from tunesmith.data.tools import TOOL_MESSAGE_KEYS, TOOL_ROLES, answered_call, check_tool_calls

ROLES = ("system", "user", "assistant")
MESSAGE_KEYS = frozenset({"role", "content", "weight"})
TEXT_PART_KEYS = frozenset({"type", "text"})
TEXT_PART_HINT = 'a text part is {"type": "text", "text": "..."}'


def check_prompt_messages(
    messages: object, line: int, name: str, issues: list[Issue], field: str = "prompt"
) -> list[dict] | None:
    """A conversation that waits for the assistant's answer (a preference prompt, a reviewed prompt):
    the chat rules, ending with a user turn. ``field`` names the key it came from in errors."""
    if not isinstance(messages, list) or not messages:
        issues.append(
            Issue.error(
                name, line, field, "must be a non-empty list of messages", 'use [{"role": "user", "content": "..."}]'
            )
        )
        return None
    last = messages[-1].get("role") if isinstance(messages[-1], dict) else None
    if last in ROLES and last != "user":
        issues.append(_must_end_with_user(name, line, field, "; drop what follows it"))
        return None
    # The chat check wants an assistant turn to learn from: lend it the answer slot, then drop it
    # (and anything it says about that borrowed turn).
    probe = [*messages, {"role": "assistant", "content": "-"}]
    shadow: list[Issue] = []
    checked = check_messages(probe, line, name, shadow)
    borrowed = f"messages[{len(messages)}]"
    before = len(issues)
    for issue in shadow:
        if not (issue.field or "").startswith(borrowed):
            issues.append(
                Issue(
                    issue.severity,
                    name,
                    line,
                    (issue.field or field).replace("messages", field, 1),
                    issue.message,
                    issue.hint,
                )
            )
    if checked is None and len(issues) == before:  # only the borrowed turn was objected to
        issues.append(_must_end_with_user(name, line, field))
    return None if checked is None else [make_message(m["role"], m["content"]) for m in checked[:-1]]


def _must_end_with_user(name: str, line: int, field: str, advice: str = "") -> Issue:
    return Issue.error(
        name,
        line,
        field,
        "the conversation must end with a user turn",
        f"the answer is the assistant's reply to the last user message{advice}",
    )


def make_message(role: str, content: str, weight: int = 1) -> dict:
    """A checked message as examples hold it: weight 1 (trained on, for an assistant turn) unless given."""
    return {"role": role, "content": content, "weight": weight}


def check_messages(
    messages: object, line: int, name: str, issues: list[Issue], function_calling: bool = False
) -> list[dict] | None:
    """The chat rules, every broken one an error; ``function_calling`` (chat lines) also admits tool
    calls and the tool messages answering them."""
    if not isinstance(messages, list) or not messages:
        issues.append(
            Issue.error(
                name,
                line,
                "messages",
                "must be a non-empty list",
                'use [{"role": "user", "content": ...}, {"role": "assistant", ...}]',
            )
        )
        return None
    before = len(issues)
    result: list[dict] = []
    previous = None
    roles = (*ROLES, *TOOL_ROLES) if function_calling else ROLES
    # id -> function name of the calls no tool message has answered yet; None after a broken call or answer,
    # when the answers that follow are not judged (one mistake, one error)
    open_calls: dict[str, str] | None = {}
    open_where = ""
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if not isinstance(message, dict):
            issues.append(
                Issue.error(
                    name,
                    line,
                    where,
                    "must be an object with role and content",
                    'write it as {"role": "user", "content": "..."}',
                )
            )
            continue
        role, content, weight = message.get("role"), message.get("content"), message.get("weight", 1)
        extra = TOOL_MESSAGE_KEYS.get(str(role), set()) if function_calling else set()
        for unknown in sorted(set(message) - MESSAGE_KEYS - extra):
            issues.append(Issue.error(name, line, f"{where}.{unknown}", "unknown key", _keys_hint(function_calling)))
        if open_calls and role not in TOOL_ROLES:
            issues.append(
                Issue.error(
                    name,
                    line,
                    f"{open_where}.tool_calls",
                    f"no tool message answers call {next(iter(open_calls))!r}",
                    "answer each of an assistant's tool calls with a tool message (role, tool_call_id, content)",
                )
            )
        if role not in TOOL_ROLES:
            open_calls = {}
        if role not in roles:
            issues.append(_role_issue(role, where, line, name, function_calling))
        elif role == "system" and index != 0:
            issues.append(
                Issue.error(
                    name, line, f"{where}.role", "system message after the start", "put the system message first, once"
                )
            )
        elif role in TOOL_ROLES:
            pass  # checked against the call it answers, below
        elif role != "system" and previous == role:
            issues.append(
                Issue.error(
                    name,
                    line,
                    f"{where}.role",
                    f"two {role} messages in a row",
                    "user and assistant turns must alternate",
                )
            )
        elif role == "assistant" and previous in (None, "system"):
            issues.append(
                Issue.error(
                    name,
                    line,
                    f"{where}.role",
                    "assistant speaks before the user",
                    "start the conversation with a user message",
                )
            )
        calls = role == "assistant" and bool(extra & set(message))
        reported = len(issues)
        text = _content_text(content, where, line, name, issues)
        # A message that makes tool calls may say nothing (content null, absent or empty).
        said = (content is None or text is not None) if calls else bool(text and text.strip())
        if not said and len(issues) == reported:
            issues.append(
                Issue.error(
                    name, line, f"{where}.content", "empty content", "every message needs non-empty text content"
                )
            )
        if weight not in (0, 1) or isinstance(weight, bool):
            issues.append(
                Issue.error(
                    name,
                    line,
                    f"{where}.weight",
                    f"weight must be 0 or 1, got {weight!r}",
                    "0 = do not train on this turn, 1 = train on it",
                )
            )
        elif role != "assistant" and "weight" in message:
            issues.append(
                Issue.error(
                    name,
                    line,
                    f"{where}.weight",
                    "weight only applies to assistant messages",
                    "drop the weight key from this message",
                )
            )
        previous = "tool" if role in TOOL_ROLES else role if role in ROLES else previous
        entry = make_message(str(role), text or "", weight)
        if calls:
            reported = len(issues)
            entry["tool_calls"] = check_tool_calls(message, where, index, line, name, issues)
            open_calls = (
                None if len(issues) > reported else {c["id"]: c["function"]["name"] for c in entry["tool_calls"]}
            )
            open_where = where
        elif role in TOOL_ROLES and function_calling:
            answered = answered_call(message, where, open_calls, line, name, issues)
            open_calls = open_calls if answered else None
            entry = {**entry, "role": "tool", "tool_call_id": answered}
        result.append(entry)
    if not any(m["role"] == "assistant" and m["weight"] == 1 for m in result):
        issues.append(
            Issue.error(
                name,
                line,
                "messages",
                "no assistant turn to learn from",
                "add an assistant message with weight 1 (or no weight key)",
            )
        )
    return None if len(issues) > before else result


def _keys_hint(function_calling: bool) -> str:
    hint = "a message has role, content and optionally weight (0 or 1)"
    return hint + "; an assistant message may add tool_calls, a tool message tool_call_id" if function_calling else hint


def _role_issue(role: object, where: str, line: int, name: str, function_calling: bool) -> Issue:
    if role in TOOL_ROLES:  # only a chat line declares tools
        return Issue.error(
            name,
            line,
            f"{where}.role",
            f"{role} messages are not supported here",
            "function calling (tool calls and tool messages) is read from chat lines only",
        )
    tool = " (and tool, answering a tool call)" if function_calling else ""
    return Issue.error(
        name, line, f"{where}.role", f"unknown role {role!r}", f"roles are system, user and assistant{tool}"
    )


def _content_text(content: object, where: str, line: int, name: str, issues: list[Issue]) -> str | None:
    """A message's text: the string, or OpenAI content parts' texts concatenated (as OpenAI reads them);
    ``None`` when it is neither. Every part that is not text is an error: the models here read text only."""
    if not isinstance(content, list):
        return content if isinstance(content, str) else None
    texts: list[str] = []
    for index, part in enumerate(content):
        at = f"{where}.content[{index}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if not isinstance(part, dict):
            issues.append(Issue.error(name, line, at, "must be a content part object", TEXT_PART_HINT))
        elif kind != "text":
            what = f"a content part of type {kind!r}" if isinstance(kind, str) else "a content part without a type"
            issues.append(
                Issue.error(
                    name,
                    line,
                    f"{at}.type",
                    f"{what}: this model takes text only",
                    f"keep only text parts, {TEXT_PART_HINT}; describe images, audio or files in words",
                )
            )
        elif not isinstance(part.get("text"), str):
            issues.append(Issue.error(name, line, f"{at}.text", "must be a string", TEXT_PART_HINT))
        else:
            for unknown in sorted(set(part) - TEXT_PART_KEYS):
                issues.append(Issue.error(name, line, f"{at}.{unknown}", "unknown key", TEXT_PART_HINT))
            texts.append(part["text"])
    return "".join(texts)
