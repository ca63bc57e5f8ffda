"""Rendering with the chat template and the loss mask: only assistant turns carry labels."""

from __future__ import annotations

import pytest

from tunesmith.core.errors import TunesmithError
from tunesmith.data.labels import classify_prompt
from tunesmith.data.records import Example
from tunesmith.data.render import (
    IGNORE,
    example_messages,
    render_example,
    render_messages,
    render_prompt,
    tokenize_document,
)
from tunesmith.models.load import load_tokenizer


def msg(role: str, content: str, weight: int = 1) -> dict:
    return {"role": role, "content": content, "weight": weight}


def targets(rendered) -> list[int]:
    return [label for label in rendered.labels if label != IGNORE]


def test_labels_are_token_ids_or_ignore(tiny_tokenizer):
    rendered = render_messages(tiny_tokenizer, [msg("user", "Hello!"), msg("assistant", "How are you?")])
    assert len(rendered.labels) == len(rendered.input_ids)
    for token, label in zip(rendered.input_ids, rendered.labels):
        assert label in (IGNORE, token)
    assert rendered.n_target == len(targets(rendered)) > 0


def test_only_assistant_tokens_carry_loss(tiny_tokenizer):
    messages = [msg("user", "Hello! How are you?"), msg("assistant", "The quick brown fox.")]
    rendered = render_messages(tiny_tokenizer, messages)
    assert tiny_tokenizer.decode(rendered.input_ids) == tiny_tokenizer.apply_chat_template(messages, tokenize=False)
    assert tiny_tokenizer.decode(targets(rendered)) == "The quick brown fox.<|im_end|>\n"
    # everything before the answer (system, user, the assistant header) carries no loss
    prompt_ids = tiny_tokenizer(render_prompt(tiny_tokenizer, messages[:1]), add_special_tokens=False)["input_ids"]
    assert rendered.input_ids[: len(prompt_ids)] == prompt_ids
    assert all(label == IGNORE for label in rendered.labels[: len(prompt_ids)])
    assert all(label != IGNORE for label in rendered.labels[len(prompt_ids) :])


def test_end_of_turn_token_is_a_target(tiny_tokenizer):
    rendered = render_messages(tiny_tokenizer, [msg("user", "Hi"), msg("assistant", "Hello")])
    im_end = tiny_tokenizer.convert_tokens_to_ids("<|im_end|>")
    positions = [i for i, token in enumerate(rendered.input_ids) if token == im_end]
    # system, user and assistant turns each end with <|im_end|>; only the assistant's is trained on
    assert len(positions) == 3
    assert [rendered.labels[i] == im_end for i in positions] == [False, False, True]


def test_multi_turn_weight_zero_turn_carries_no_loss(tiny_tokenizer):
    messages = [
        msg("user", "Hello!"),
        msg("assistant", "The lazy dog.", weight=0),
        msg("user", "How are you today?"),
        msg("assistant", "The quick brown fox."),
    ]
    rendered = render_messages(tiny_tokenizer, messages)
    assert tiny_tokenizer.decode(targets(rendered)) == "The quick brown fox.<|im_end|>\n"

    both = render_messages(tiny_tokenizer, [{**m, "weight": 1} for m in messages])
    assert both.input_ids == rendered.input_ids
    assert tiny_tokenizer.decode(targets(both)) == "The lazy dog.<|im_end|>\nThe quick brown fox.<|im_end|>\n"


def test_decoded_targets_are_exactly_the_assistant_content(tiny_tokenizer):
    for answer in ["0123456789", "Hello! How are you today?", "  spaced  out  ", "CU-1234\nFBX-200"]:
        rendered = render_messages(tiny_tokenizer, [msg("user", "Summarise the call."), msg("assistant", answer)])
        assert tiny_tokenizer.decode(targets(rendered)) == answer + "<|im_end|>\n"


def test_system_prompt_is_injected(tiny_tokenizer):
    example = Example(line=1, messages=[msg("user", "Hi"), msg("assistant", "Hello")])
    messages = example_messages(example, system_prompt="You are terse.")
    assert messages[0] == {"role": "system", "content": "You are terse.", "weight": 1}
    text = tiny_tokenizer.decode(render_example(tiny_tokenizer, example, system_prompt="You are terse.").input_ids)
    assert text.startswith("<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nHi")
    assert "tiny test model" not in text
    # the system prompt carries no loss
    rendered = render_example(tiny_tokenizer, example, system_prompt="You are terse.")
    assert tiny_tokenizer.decode(targets(rendered)) == "Hello<|im_end|>\n"


def test_existing_system_message_is_kept(tiny_tokenizer):
    example = Example(line=1, messages=[msg("system", "Be kind."), msg("user", "Hi"), msg("assistant", "Hello")])
    messages = example_messages(example, system_prompt="You are terse.")
    assert [m["content"] for m in messages] == ["Be kind.", "Hi", "Hello"]


def test_classification_renders_the_label_as_the_answer(tiny_tokenizer):
    labels = ["negative", "positive"]
    example = Example(line=1, text="the soup was great", label="positive")
    messages = example_messages(example, labels)
    assert messages[0]["role"] == "user" and messages[0]["content"] == classify_prompt("the soup was great", labels)
    assert "negative, positive" in messages[0]["content"] and "the soup was great" in messages[0]["content"]
    assert messages[1] == {"role": "assistant", "content": "positive", "weight": 1}
    rendered = render_example(tiny_tokenizer, example, labels)
    assert tiny_tokenizer.decode(targets(rendered)) == "positive<|im_end|>\n"
    with pytest.raises(ValueError):
        example_messages(example)


def test_tokenize_document_appends_eos(tiny_tokenizer):
    ids = tokenize_document(tiny_tokenizer, "The quick brown fox.")
    assert ids[-1] == tiny_tokenizer.eos_token_id
    assert tiny_tokenizer.decode(ids[:-1]) == "The quick brown fox."


def test_template_that_is_not_prefix_stable_is_refused(tiny_model_dir):
    tokenizer = load_tokenizer(tiny_model_dir)
    # renders the turns newest first: the conversation so far is not a prefix of the whole
    tokenizer.chat_template = (
        "{% for message in messages|reverse %}{{ '<|im_start|>' + message['role'] + '\n' + message['content']"
        " + '<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    )
    with pytest.raises(TunesmithError, match="prefix-stable"):
        render_messages(tokenizer, [msg("user", "Hi"), msg("assistant", "Hello")])


def test_a_classifier_wraps_user_text_in_its_instruction_once():
    from tunesmith.inference.loaded import LoadedModel

    loaded = LoadedModel("m:1", None, None, task="classify", labels=["negative", "positive"])
    plain = loaded.conversation([{"role": "user", "content": "The soup was cold."}])
    assert plain == [{"role": "user", "content": classify_prompt("The soup was cold.", ["negative", "positive"])}]
    assert loaded.conversation(plain) == plain  # already wrapped (a distillation client): left as it is
    other_order = [{"role": "user", "content": classify_prompt("The soup was cold.", ["positive", "negative"])}]
    assert loaded.conversation(other_order) == other_order


# function calling ---------------------------------------------------------------------------------------

TOOL_TEMPLATE = (  # ChatML that renders tools and tool calls (as Qwen-style templates do, much shortened)
    "{% if tools %}{{ '<|im_start|>system\nTools: ' + tools | map(attribute='function.name') | join(', ') }}"
    "{{ '<|im_end|>\n' }}{% endif %}"
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] }}"
    "{% for call in message.tool_calls or [] %}"
    "{{ '<call>' + call.function.name + ' ' + call.function.arguments | tojson + '</call>' }}{% endfor %}"
    "{{ '<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
WEATHER_TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
CALL = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
TOOL_CONVERSATION = [
    msg("user", "Weather in Paris?"),
    {**msg("assistant", ""), "tool_calls": [CALL]},
    {**msg("tool", "sunny"), "tool_call_id": "call_1"},
    msg("assistant", "Sunny."),
]


def tool_example() -> Example:
    return Example(line=1, messages=TOOL_CONVERSATION, tools=[WEATHER_TOOL])


@pytest.fixture
def tool_tokenizer(tiny_model_dir):
    tokenizer = load_tokenizer(tiny_model_dir)
    tokenizer.chat_template = TOOL_TEMPLATE
    return tokenizer


def test_a_tool_template_renders_tools_and_trains_on_calls(tool_tokenizer):
    rendered = render_example(tool_tokenizer, tool_example())
    text = tool_tokenizer.decode(rendered.input_ids)
    assert text.startswith("<|im_start|>system\nTools: get_weather<|im_end|>\n")
    assert "<|im_start|>tool\nsunny<|im_end|>" in text
    # the loss covers both assistant turns (the call, its arguments as the template writes them, and the
    # answer), not the tools, the user or the tool's result
    trained = tool_tokenizer.decode(targets(rendered))
    assert trained == '<call>get_weather {"city": "Paris"}</call><|im_end|>\nSunny.<|im_end|>\n'


def test_render_prompt_passes_tools(tool_tokenizer):
    prompt = render_prompt(tool_tokenizer, TOOL_CONVERSATION[:1], [WEATHER_TOOL])
    assert prompt.startswith("<|im_start|>system\nTools: get_weather") and prompt.endswith("<|im_start|>assistant\n")


def test_a_template_without_tool_support_is_refused(home):
    from tunesmith.data.render import NoToolSupport
    from tunesmith.models.base import resolve_base

    tokenizer = load_tokenizer(resolve_base("smollm2-135m"))  # the embedded base: its template ignores tools
    assert "tools" not in tokenizer.chat_template
    with pytest.raises(
        NoToolSupport, match=r"^the base model's chat template has no tool support; .*tools and tool calls"
    ):
        render_example(tokenizer, tool_example())
    # tool calls without tools declared are dropped as silently
    with pytest.raises(NoToolSupport, match="would drop the tool calls;"):
        render_messages(tokenizer, TOOL_CONVERSATION)


def test_the_data_check_reports_missing_tool_support(write_jsonl, tiny_tokenizer, tool_tokenizer):
    from tunesmith.data.check import check_data

    line = {
        "messages": [
            {k: v for k, v in m.items() if k != "weight" or m["role"] == "assistant"} for m in TOOL_CONVERSATION
        ]
    }
    line["messages"][1]["content"] = None
    path = write_jsonl(
        "tools.jsonl", [line, {"messages": [{"role": "user", "content": "Hi"}, msg("assistant", "Hello")]}, line]
    )
    report = check_data(path, tokenizer=tiny_tokenizer)
    assert not report.ok and not report.rendered
    [issue] = report.errors
    assert (issue.line, issue.field) == (1, "tools")
    assert issue.message.startswith("the base model's chat template has no tool support;")
    assert "2 function-calling example(s) (lines 1, 3)" in issue.message and "base model" in issue.hint
    supported = check_data(path, tokenizer=tool_tokenizer)
    assert supported.ok, [str(e) for e in supported.errors]
