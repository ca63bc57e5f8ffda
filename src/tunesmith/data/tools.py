"""Function calling as OpenAI fine-tunes it: a chat line's tool definitions (``tools``, or the legacy
``functions``), an assistant's ``tool_calls`` (or the legacy ``function_call``), the tool message answering
each call, and calls of functions the line does not declare. ``messages`` walks the conversation and asks
here about each call and answer."""

from __future__ import annotations

import json

from tunesmith.data.readers import json_type
from tunesmith.data.records import Issue

TOOL_ROLES = ("tool", "function")  # "function": the legacy answer to a function_call
# Keys function calling adds to a message of a role (chat lines only).
TOOL_MESSAGE_KEYS = {"assistant": {"tool_calls", "function_call"}, "tool": {"tool_call_id"}, "function": {"name"}}
CALL_SHAPE = '{"id": "call_1", "type": "function", "function": {"name": "...", "arguments": "{...}"}}'


def check_tool_calls(message: dict, where: str, index: int, line: int, name: str, issues: list[Issue]) -> list[dict]:
    """An assistant's tool calls, checked (ids, "function", a name, arguments as a JSON string); the legacy
    ``function_call`` becomes one call, with an id made from its message's index."""
    if "tool_calls" in message and "function_call" in message:
        issues.append(
            Issue.error(
                name,
                line,
                f"{where}.function_call",
                "both tool_calls and function_call",
                "function_call is the older form of tool_calls: keep one",
            )
        )
        return []
    if "function_call" in message:
        function = _check_function_call(message["function_call"], f"{where}.function_call", line, name, issues)
        return [{"id": f"call_{index}", "type": "function", "function": function}] if function else []
    calls = message["tool_calls"]
    if not isinstance(calls, list) or not calls:
        issues.append(Issue.error(name, line, f"{where}.tool_calls", "must be a non-empty list of calls", CALL_SHAPE))
        return []
    checked: list[dict] = []
    for number, call in enumerate(calls):
        at = f"{where}.tool_calls[{number}]"
        if not isinstance(call, dict):
            issues.append(Issue.error(name, line, at, "must be an object", f"a call looks like {CALL_SHAPE}"))
            continue
        reported = len(issues)
        for unknown in sorted(set(call) - {"id", "type", "function"}):
            issues.append(Issue.error(name, line, f"{at}.{unknown}", "unknown key", "a call has id, type and function"))
        call_id = call.get("id")
        if not isinstance(call_id, str) or not call_id.strip():
            issues.append(
                Issue.error(
                    name,
                    line,
                    f"{at}.id",
                    "missing call id",
                    "give each call an id; the tool message answering it repeats it as tool_call_id",
                )
            )
        if call.get("type") != "function":
            issues.append(
                Issue.error(
                    name,
                    line,
                    f"{at}.type",
                    f'type must be "function", got {call.get("type")!r}',
                    f"a call looks like {CALL_SHAPE}",
                )
            )
        function = _check_function_call(call.get("function"), f"{at}.function", line, name, issues)
        if function is not None and len(issues) == reported:
            checked.append({"id": call_id, "type": "function", "function": function})
    return checked


def _check_function_call(function: object, at: str, line: int, name: str, issues: list[Issue]) -> dict | None:
    """``{"name", "arguments"}`` with the arguments a JSON object encoded as a string, as OpenAI writes them."""
    example = '"arguments": "{\\"city\\": \\"Paris\\"}"'
    if not isinstance(function, dict):
        issues.append(Issue.error(name, line, at, "must be an object with name and arguments", f"use {{{example}}}"))
        return None
    reported = len(issues)
    for unknown in sorted(set(function) - {"name", "arguments"}):
        issues.append(
            Issue.error(name, line, f"{at}.{unknown}", "unknown key", "a function call has name and arguments")
        )
    called = function.get("name")
    if not isinstance(called, str) or not called.strip():
        issues.append(Issue.error(name, line, f"{at}.name", "missing function name", "name the function called"))
    arguments = function.get("arguments")
    problem = None
    if "arguments" not in function:
        problem = "missing arguments"
    elif not isinstance(arguments, str):
        problem = f"must be a JSON string, got {json_type(arguments)}"
    else:
        try:
            parsed = json.loads(arguments)
        except json.JSONDecodeError as err:
            problem = f"not valid JSON: {err.msg} at column {err.colno}"
        else:
            problem = None if isinstance(parsed, dict) else f"must encode a JSON object, got {json_type(parsed)}"
    if problem:
        issues.append(
            Issue.error(
                name,
                line,
                f"{at}.arguments",
                problem,
                f"encode the arguments object as a string: {example} ('{{}}' for none)",
            )
        )
    return {"name": called, "arguments": arguments} if len(issues) == reported else None


def answered_call(
    message: dict, where: str, open_calls: dict[str, str] | None, line: int, name: str, issues: list[Issue]
) -> str:
    """The id of the open call a tool message answers (a legacy function message: by the function's name);
    "" after an error, or when the calls are not judged (``None``: they were broken)."""
    if open_calls is None:
        return ""
    if message.get("role") == "function":
        key, wanted = "name", message.get("name")
        found = next((id_ for id_, called in open_calls.items() if called == wanted), None)
    else:
        key, wanted = "tool_call_id", message.get("tool_call_id")
        found = wanted if isinstance(wanted, str) and wanted in open_calls else None
    if found is not None:
        del open_calls[found]
        return found
    if not isinstance(wanted, str) or not wanted.strip():
        message_text, hint = f"missing {key}", "name the call this message answers"
    elif not open_calls:
        message_text = "a tool message without a tool call before it"
        hint = "a tool message follows the assistant message whose call it answers"
    else:
        message_text = f"no open call {wanted!r} in the assistant message before it"
        hint = f"the calls waiting for an answer: {', '.join(sorted(open_calls))}"
    issues.append(Issue.error(name, line, f"{where}.{key}", message_text, hint))
    return ""


def check_tools(obj: dict, line: int, name: str, issues: list[Issue]) -> list[dict]:
    """A chat line's tool definitions (OpenAI's ``tools``, or the legacy ``functions`` read as tools)."""
    shape = '[{"type": "function", "function": {"name": "...", "description": "...", "parameters": {...}}}]'
    if "tools" in obj and "functions" in obj:
        issues.append(
            Issue.error(
                name, line, "functions", "both tools and functions", "functions is the older form of tools: keep one"
            )
        )
        return []
    key = "tools" if "tools" in obj else "functions" if "functions" in obj else None
    if key is None:
        return []
    if not isinstance(obj[key], list) or not obj[key]:
        issues.append(Issue.error(name, line, key, "must be a non-empty list of tools", f"use {shape}"))
        return []
    tools: list[dict] = []
    for index, tool in enumerate(obj[key]):
        at = f"{key}[{index}]"
        function, function_at = (tool, at) if key == "functions" else (None, f"{at}.function")
        if key == "tools" and not isinstance(tool, dict):
            issues.append(Issue.error(name, line, at, "must be an object", f"use {shape}"))
            continue
        if key == "tools":
            if tool.get("type") != "function":
                issues.append(
                    Issue.error(
                        name,
                        line,
                        f"{at}.type",
                        f"only function tools are supported, got {tool.get('type')!r}",
                        f'use {{"type": "function", ...}}: {shape}',
                    )
                )
                continue
            function = tool.get("function")
        if not isinstance(function, dict):
            issues.append(Issue.error(name, line, function_at, "must be an object with name", f"use {shape}"))
        elif not isinstance(function.get("name"), str) or not function["name"].strip():
            issues.append(Issue.error(name, line, f"{function_at}.name", "missing function name", "name the function"))
        elif not isinstance(function.get("parameters", {}), dict):
            issues.append(
                Issue.error(
                    name,
                    line,
                    f"{function_at}.parameters",
                    f"must be a JSON schema object, got {json_type(function['parameters'])}",
                    'describe the arguments: {"type": "object", "properties": {...}}',
                )
            )
        else:
            tools.append(tool if key == "tools" else {"type": "function", "function": function})
    return tools


def check_called_names(messages: list[dict], tools: list[dict], line: int, name: str, issues: list[Issue]) -> None:
    """Warn about calls of functions the line does not declare: the model would learn to call what it is not shown."""
    declared = {tool["function"]["name"] for tool in tools}
    for index, message in enumerate(messages):
        unknown = sorted({c["function"]["name"] for c in message.get("tool_calls", [])} - declared)
        if unknown:
            issues.append(
                Issue.warning(
                    name,
                    line,
                    f"messages[{index}].tool_calls",
                    f"calls {', '.join(unknown)}, not declared in tools",
                    "declare every called function in the line's tools",
                )
            )
