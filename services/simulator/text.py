"""Deterministic text and token counting: pure, precomputed at import, cheap per request.

The rules (both APIs, documented for whoever reads a usage block):

- **Prompt tokens** = for every message, the number of whitespace-separated words in its
  text (`str.split()` over a string content, or over every `text` part / block of a list
  content; other parts such as images or tool calls count no words) + 3. Anthropic's
  `system` prompt, when present, counts as one more message.
- **Completion tokens**: a reply ends by itself, like a model's, after a *natural length*
  of NATURAL_MIN to NATURAL_MAX tokens derived from the prompt (finish reason `stop` /
  `end_turn`), or is cut at `max_tokens` when that is shorter (finish reason `length` /
  `max_tokens`). Each token is one word of a fixed vocabulary followed by a space. Which
  words, and the natural length, are fixed by a CRC-32 of the model name and the text of the
  messages, so the same request always gets the same text, streamed or not. A client that
  asks for 32,000 tokens gets a few dozen, as from a real model, not 32,000 of filler.
- **Stop sequences** (`stop` / `stop_sequences`): the reply ends before the first token in
  which one of them begins, with finish reason `stop` / `stop_sequence` (Anthropic also names
  the sequence); the sequence itself is not part of the reply.
- Markers, read from the text of the **last user message** only:
  - `[[cached:N]]`: N of the prompt tokens are reported as cache reads (capped at the
    prompt tokens): OpenAI `usage.prompt_tokens_details.cached_tokens = N` (included in
    `prompt_tokens`), Anthropic `usage.cache_read_input_tokens = N` with `input_tokens`
    the remaining uncached tokens.
  - `[[tokens:N]]`: the reply is N tokens long instead of its natural length (still cut at
    max_tokens): how tests and benches ask for an exact length or a long stream. N >=
    max_tokens gives exactly max_tokens tokens with finish reason `length` / `max_tokens`.
"""

import itertools
import re
import zlib
from collections.abc import Iterable, Sequence
from typing import NamedTuple

VOCAB: tuple[str, ...] = tuple(
    """
    the flow plan model token window quota stream event meter count usage price cache reply prompt
    answer signal river stone cloud light north south east west quiet rapid steady simple clear exact
    bright amber cobalt copper silver golden violet green orange yellow crimson indigo maple cedar pine
    birch willow oak harbor valley meadow summit canyon island forest desert glacier delta engine
    beacon ledger record credit balance refund invoice account border hour week month minute second
    moment season morning evening night build carry bring write read check trace watch merge split join
    measure settle travel gather wander follow return repeat begin and with from into over under after
    before while since a an one two three four five six seven eight nine ten many few each every some
    all more less
    """.split()
)
CYCLE = 4096
"""Length of the fixed token sequence a completion is cut from (wrapping around)."""


def _sequence() -> tuple[str, ...]:
    state, words = 0x9E3779B9, []
    for _ in range(CYCLE):  # xorshift32: the same sequence on every platform and Python version
        state ^= (state << 13) & 0xFFFFFFFF
        state ^= state >> 17
        state ^= (state << 5) & 0xFFFFFFFF
        words.append(VOCAB[state % len(VOCAB)] + " ")
    return tuple(words)


TOKENS: tuple[str, ...] = _sequence()
"""The fixed token sequence; token i of a completion starting at `start` is TOKENS[(start + i) % CYCLE]."""
TOKEN_BYTES: tuple[bytes, ...] = tuple(t.encode() for t in TOKENS)
"""The same, UTF-8 encoded; plain ASCII words, so also valid inside a JSON string as they are."""
_TEXT = "".join(TOKENS) * 2
_OFFSETS: tuple[int, ...] = tuple(itertools.accumulate((len(t) for t in TOKENS * 2), initial=0))
_CACHED = re.compile(r"\[\[cached:(\d+)\]\]")
_LIMIT = re.compile(r"\[\[tokens:(\d+)\]\]")
PER_MESSAGE = 3
NATURAL_MIN = 8
NATURAL_MAX = 64


class Prompt(NamedTuple):
    tokens: int
    """Prompt tokens, cached ones included."""
    cached: int
    """Of them, reported as read from the cache."""
    start: int
    """Where in the token sequence the completion starts."""
    limit: int | None
    """A `[[tokens:N]]` marker's N."""


def words(text: str) -> int:
    return len(text.split())


def analyse(model: str, messages: Iterable[Sequence[str]], last_user: Sequence[str]) -> Prompt:
    """Count a prompt given each message's text pieces, and read the markers of the last user message."""
    tokens, crc = 0, zlib.crc32(model.encode())
    for pieces in messages:
        tokens += PER_MESSAGE
        for piece in pieces:
            tokens += len(piece.split())
            crc = zlib.crc32(piece.encode(errors="surrogatepass"), zlib.crc32(b"\0", crc))
    cached, limit = 0, None
    for piece in last_user:
        if "[[" in piece:
            if found := _CACHED.search(piece):
                cached = int(found.group(1))
            if found := _LIMIT.search(piece):
                limit = int(found.group(1))
    return Prompt(tokens, min(cached, tokens), crc % CYCLE, limit)


def natural_length(prompt: Prompt) -> int:
    """How long the reply to this prompt is when nothing cuts it: NATURAL_MIN..NATURAL_MAX tokens."""
    return NATURAL_MIN + prompt.start % (NATURAL_MAX - NATURAL_MIN + 1)


def completion_length(prompt: Prompt, max_tokens: int) -> int:
    """The reply's length: its natural (or `[[tokens:N]]`) length, cut at max_tokens; the reply
    was cut (finish reason `length`) exactly when this equals max_tokens."""
    wanted = natural_length(prompt) if prompt.limit is None else prompt.limit
    return min(wanted, max_tokens)


def completion_text(start: int, n: int) -> str:
    """The n tokens from `start`, as one string (a slice of the precomputed text)."""
    whole, rest = divmod(n, CYCLE)
    first = _OFFSETS[start]
    tail = _TEXT[first : _OFFSETS[start + rest]]
    return _TEXT[first : _OFFSETS[start + CYCLE]] * whole + tail if whole else tail


def completion_tokens(start: int, n: int) -> Iterable[bytes]:
    """The same n tokens one by one, UTF-8 encoded."""
    for i in range(start, start + n):
        yield TOKEN_BYTES[i % CYCLE]


def stop_at(start: int, n: int, stops: Sequence[str]) -> tuple[int, str] | None:
    """Where a stop sequence cuts the n tokens from `start`: (tokens kept, the sequence), or None."""
    found = [(i, stop) for stop in stops if stop and (i := completion_text(start, n).find(stop)) >= 0]
    if not found:
        return None
    first, stop = min(found)
    position = 0
    for kept in range(n):
        position += len(TOKENS[(start + kept) % CYCLE])
        if position > first:
            return kept, stop
    return n, stop
