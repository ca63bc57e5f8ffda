"""The Ollama ``Modelfile`` beside a GGUF export. Ollama ignores the Jinja template inside a GGUF and needs its own
(a Go template), so the chat template is translated: only for ChatML-style templates (the embedded base's), which
are recognised by what they render, not by their source text."""

from __future__ import annotations

from tunesmith.data.render import render_prompt

CHATML_TURN = "<|im_start|>{role}\n{content}<|im_end|>\n"
GO_CHATML = "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n"


def chatml_default_system(tokenizer) -> tuple[bool, str | None]:
    """(whether the template renders ChatML, the system prompt it adds when a conversation has none)."""
    turns = [
        {"role": "user", "content": "U1"},
        {"role": "assistant", "content": "A1"},
        {"role": "user", "content": "U2"},
    ]
    expected = "".join(CHATML_TURN.format(role=m["role"], content=m["content"]) for m in turns)
    expected += "<|im_start|>assistant\n"
    with_system = render_prompt(tokenizer, [{"role": "system", "content": "S"}, *turns])
    if with_system != CHATML_TURN.format(role="system", content="S") + expected:
        return False, None
    without = render_prompt(tokenizer, turns)
    if without == expected:
        return True, None
    head = without[: -len(expected)] if without.endswith(expected) else None
    prefix, suffix = "<|im_start|>system\n", "<|im_end|>\n"
    if head and head.startswith(prefix) and head.endswith(suffix):
        return True, head[len(prefix) : -len(suffix)]
    return False, None


def modelfile(gguf_name: str, tokenizer, system_prompt: str | None) -> str | None:
    """The Modelfile text, or None where the template is not ChatML (then TEMPLATE must be written by hand)."""
    chatml, default_system = chatml_default_system(tokenizer)
    if not chatml:
        return None
    template = GO_CHATML
    if default_system is not None:  # what the Jinja template adds when no system message is sent
        template = (
            '{{- if or (not .Messages) (ne (index .Messages 0).Role "system") }}<|im_start|>system\n'
            + default_system
            + "<|im_end|>\n{{ end }}"
            + GO_CHATML
        )
    lines = [f"FROM ./{gguf_name}", f'TEMPLATE """{template}"""', 'PARAMETER stop "<|im_end|>"']
    if system_prompt:
        lines.append(f'SYSTEM """{system_prompt}"""')
    return "\n".join(lines) + "\n"
