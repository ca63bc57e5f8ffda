"""Request bodies of /v1/chat/completions and /v1/completions, as pydantic models.

Every field is bounded, so the OpenAPI document says what is accepted and a malformed request is a
400 naming its field (serve.protocol) rather than an error deep in generation. Unknown fields are
ignored, as clients send ones that change nothing here (``user``, ``store``, ``metadata``); fields
we cannot honour are declared and refused (400) when set to anything but their no-op value, so a
client never silently gets something other than it asked for.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints

from tunesmith.serve.protocol import APIError

MAX_TOKENS = 4096  # new tokens per choice
MAX_TEXT = 100_000  # characters of one message or prompt
MAX_PROMPTS = 64
MAX_N = 8


ModelName = Annotated[str, StringConstraints(min_length=1, max_length=256)]
Text = Annotated[str, StringConstraints(max_length=MAX_TEXT)]
StopString = Annotated[str, StringConstraints(min_length=1, max_length=128)]
NewTokens = Annotated[int, Field(ge=1, le=MAX_TOKENS)]


def _listed(value: Any) -> Any:
    """A field that is "a string or a list of them" is kept as a list, so an error names ``stop`` or
    ``stop.2`` rather than the member of a union that failed."""
    return [value] if isinstance(value, str) else value


Stops = Annotated[
    list[StopString],
    BeforeValidator(_listed, json_schema_input_type=StopString | list[StopString]),
    Field(max_length=4),
]
Prompts = Annotated[
    list[Text],
    BeforeValidator(_listed, json_schema_input_type=Text | list[Text]),
    Field(min_length=1, max_length=MAX_PROMPTS),
]


class StreamOptions(BaseModel):
    include_usage: bool | None = False


class TextPart(BaseModel):
    type: Literal["text"]
    text: Text


def _parts(value: Any) -> Any:
    return [{"type": "text", "text": value}] if isinstance(value, str) else value


class Message(BaseModel):
    role: Literal["system", "developer", "user", "assistant"]
    content: Annotated[
        list[TextPart],
        BeforeValidator(_parts, json_schema_input_type=Text | list[TextPart]),
        Field(min_length=1, max_length=64),
    ]

    def as_dict(self) -> dict:
        """The message as the chat template takes it (``developer`` is the newer name of ``system``)."""
        return {
            "role": "system" if self.role == "developer" else self.role,
            "content": "".join(part.text for part in self.content),
        }


class _Sampled(BaseModel):
    """What both endpoints share: the model, sampling, stopping, streaming, and the refused features."""

    model_config = ConfigDict(extra="ignore")

    model: ModelName
    temperature: float | None = Field(1.0, ge=0, le=2, description="0 is greedy decoding")
    top_p: float | None = Field(1.0, ge=0, le=1)
    n: int | None = Field(1, ge=1, le=MAX_N)
    stop: Stops | None = None
    seed: int | None = Field(
        None, ge=-(2**63), le=2**63 - 1, description="the same seed and request give the same text"
    )
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    user: Annotated[str, StringConstraints(max_length=256)] | None = None  # accepted, unused
    # refused unless at their no-op value
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    logit_bias: Annotated[dict[str, float], Field(max_length=300)] | None = None

    def stops(self) -> tuple[str, ...]:
        return tuple(self.stop or ())

    def choices_per_prompt(self) -> int:
        return self.n or 1

    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def refuse_unsupported(self) -> None:
        refused = {
            "presence_penalty": self.presence_penalty not in (None, 0),
            "frequency_penalty": self.frequency_penalty not in (None, 0),
            "logit_bias": bool(self.logit_bias),
        } | self._refused()
        for field, is_set in refused.items():
            if is_set:
                raise APIError(
                    400, f"{field} is not supported by this server", param=field, code="unsupported_parameter"
                )

    def _refused(self) -> dict[str, bool]:
        return {}


class ChatCompletionRequest(_Sampled):
    messages: Annotated[list[Message], Field(min_length=1, max_length=256)]
    max_tokens: NewTokens | None = None
    max_completion_tokens: NewTokens | None = Field(
        None, description=f"wins over max_tokens; default: the rest of the context window, at most {MAX_TOKENS}"
    )
    # refused unless at their no-op value
    tools: Annotated[list[dict[str, Any]], Field(max_length=128)] | None = None
    tool_choice: str | dict[str, Any] | None = None
    functions: Annotated[list[dict[str, Any]], Field(max_length=128)] | None = None
    function_call: str | dict[str, Any] | None = None
    logprobs: bool | None = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    response_format: dict[str, Any] | None = None
    modalities: Annotated[list[str], Field(max_length=4)] | None = None
    audio: dict[str, Any] | None = None

    def new_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def _refused(self) -> dict[str, bool]:
        return {
            "tools": bool(self.tools),
            "tool_choice": self.tool_choice not in (None, "none"),
            "functions": bool(self.functions),
            "function_call": self.function_call not in (None, "none"),
            "logprobs": bool(self.logprobs),
            "top_logprobs": bool(self.top_logprobs),
            "response_format": self.response_format not in (None, {"type": "text"}),
            "modalities": self.modalities not in (None, [], ["text"]),
            "audio": self.audio is not None,
        }


class CompletionRequest(_Sampled):
    prompt: Prompts
    max_tokens: NewTokens | None = Field(16, description="16 when not given, as in the OpenAI API")
    # refused unless at their no-op value
    echo: bool | None = False
    suffix: Annotated[str, StringConstraints(max_length=MAX_TEXT)] | None = None
    logprobs: int | None = Field(None, ge=0, le=5)
    best_of: int | None = Field(None, ge=1, le=20)

    def new_tokens(self) -> int:
        return self.max_tokens or 16

    def _refused(self) -> dict[str, bool]:
        return {
            "echo": bool(self.echo),
            "suffix": bool(self.suffix),
            "logprobs": self.logprobs is not None,
            "best_of": self.best_of not in (None, 1, self.n),
        }
