"""A conversation with a loaded model (``tunesmith chat``): what it remembers, and what each turn sends."""

from __future__ import annotations

from transformers import TextStreamer
from transformers.generation.streamers import BaseStreamer

from tunesmith.inference.loaded import LoadedModel, generate_answer


class ChatSession:
    """Turns with one model. A chat model sees the earlier turns of the conversation; a classifier answers
    each text on its own, as it was trained to."""

    def __init__(self, loaded: LoadedModel, max_tokens: int = 256, temperature: float = 0.0):
        self.loaded, self.max_tokens, self.temperature = loaded, max_tokens, temperature
        self.history: list[dict] = []  # earlier user and assistant turns, without the system prompt

    def say(self, prompt: str, streamer: BaseStreamer | None = None) -> str:
        """The model's answer to ``prompt`` after the turns so far; ``streamer`` receives it as it is generated."""
        messages = self.loaded.messages_for(prompt, self.history)
        answer = generate_answer(
            self.loaded,
            messages=messages,
            max_tokens=self.max_tokens,
            temperature=self.temperature,
            streamer=streamer,
        )
        if self.loaded.task != "classify":
            # messages_for puts the stored system prompt first on every turn: the history keeps the rest.
            self.history = [
                *messages[1 if self.loaded.system_prompt else 0 :],
                {"role": "assistant", "content": answer},
            ]
        return answer

    def reset(self) -> None:
        """Forget the earlier turns."""
        self.history = []

    def printer(self) -> TextStreamer:
        """A streamer for ``say`` that prints the answer to stdout as it is generated."""
        return TextStreamer(self.loaded.tokenizer, skip_prompt=True, skip_special_tokens=True)
