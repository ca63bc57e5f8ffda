"""Does a chat or completion file look like a fact base? Then the data check says that retrieval may serve
better than fine-tuning (the product brief: fine-tuning changes behaviour more than it adds facts)."""

from __future__ import annotations

import re

from tunesmith.data.formats import ParsedFile
from tunesmith.data.records import Example, Issue, positions

# A fact base: mostly questions whose answers are isolated facts (the product brief: fine-tuning changes
# behaviour more than it adds retrievable facts, so the check says when retrieval may serve better).
# Kept simple on purpose. An example is a fact lookup when its last user turn
#   - is a question: ends with "?" or starts with who/what/when/where/which/how many... (FACT_QUESTION),
#   - that is not addressed to the assistant or a request for work: no "you"/"your", not why/how do/can...
#     (chit-chat such as "Are you a programmer?" and "can you write a trie?" are not lookups),
# and its answer is short (at most FACT_ANSWER_WORDS words) and names something: a number, a capitalised
# word after the first, or the whole answer in FACT_BARE_WORDS words or fewer ("Ireland", "1969"), yes/no
# excepted. The file is a fact base when at least FACT_SHARE of its (at least FACT_MIN_EXAMPLES) examples
# are lookups and FACT_DISTINCT of those answers differ (one fact each, not a few canned replies).
# On ../shared/data/chat-corpus (support replies, chit-chat and a trivia topic) 12-16% of examples are lookups.
FACT_QUESTION = re.compile(
    r"^(who|whom|whose|what|when|where|which|how (many|much|old|long|far|tall|big|large|high|deep)"
    r"|in (what|which)|name (the|a)|list the)\b",
    re.IGNORECASE,
)
NOT_A_LOOKUP = re.compile(
    r"\b(you|your|yours|yourself)\b|^(why|how (do|does|did|can|could|should|would|to|are|is)|can|could|would|will"
    r"|please|do|does|did|are|is)\b",
    re.IGNORECASE,
)
FACT_ANSWER_WORDS = 12
FACT_BARE_WORDS = 4
FACT_MIN_EXAMPLES = 20
FACT_SHARE = 0.5
FACT_DISTINCT = 0.8
_NOT_FACTS = {"yes", "no", "maybe", "sure", "ok", "okay", "thanks", "hello", "hi"}


def is_fact_lookup(question: str, answer: str) -> bool:
    """Whether a (question, answer) pair looks like looking up one fact (see FACT_QUESTION above)."""
    question, words = question.strip(), answer.split()
    if not (question.endswith("?") or FACT_QUESTION.match(question)) or NOT_A_LOOKUP.search(question):
        return False
    if not words or len(words) > FACT_ANSWER_WORDS or words[0].strip(".,!").lower() in _NOT_FACTS:
        return False
    names = any(char.isdigit() for char in answer) or any(word[:1].isupper() for word in words[1:])
    return names or len(words) <= FACT_BARE_WORDS


def fact_base(parsed: ParsedFile) -> list[Issue]:
    """A warning when ``parsed`` looks like a fact base (above), else nothing."""
    pairs = [pair for example in parsed.examples if (pair := _question_and_answer(example)) is not None]
    if len(pairs) < FACT_MIN_EXAMPLES:
        return []
    lookups = [(line, answer) for line, question, answer in pairs if is_fact_lookup(question, answer)]
    distinct = len({" ".join(answer.casefold().split()) for _, answer in lookups})
    if len(lookups) < FACT_SHARE * len(pairs) or distinct < FACT_DISTINCT * len(lookups):
        return []
    return [
        Issue.warning(
            str(parsed.path),
            None,
            None,
            f"the data looks like a fact base: {len(lookups)} of {len(pairs)} examples ask a factual question "
            f"with a short answer ({positions(str(parsed.path), [line for line, _ in lookups])})",
            "fine-tuning changes how a model behaves more than it adds knowledge it can recall reliably; to "
            "answer from facts, retrieval (look them up and put them in the prompt, RAG) may serve better, and "
            "fine-tuning then teaches the style of the answers",
        )
    ]


def _question_and_answer(example: Example) -> tuple[int, str, str] | None:
    """(line, the last user turn, the assistant's answer after it) of a chat-like example, or None."""
    users = [i for i, m in enumerate(example.messages) if m["role"] == "user" and isinstance(m.get("content"), str)]
    if not users:
        return None
    after = [m for m in example.messages[users[-1] + 1 :] if m["role"] == "assistant"]
    if not after or not isinstance(after[0].get("content"), str):
        return None
    return example.line, example.messages[users[-1]]["content"], after[0]["content"]
