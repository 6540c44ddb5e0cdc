"""What Claude Code calls besides messages: `POST /v1/messages/count_tokens` (not billed, not
counted against RPM) and `GET /v1/models` in Anthropic's list format, through the anthropic SDK."""

import anthropic
import openai
import pytest

from tests.e2e.conftest import FREE_MODEL, PRO_CLAUDE, claude, metered, oai, pro_account
from tests.stack import Stack

pytestmark = pytest.mark.connected
QUESTION = [{"role": "user", "content": "How many Flows does this call cost?"}]


async def test_count_tokens_is_the_upstreams_count_and_free(stack: Stack) -> None:
    account = await pro_account(stack)
    client = claude(stack, account["key"])
    raw = await client.messages.with_raw_response.count_tokens(model=PRO_CLAUDE, messages=QUESTION, system="Be brief.")
    counted = await raw.parse()
    assert raw.headers["x-flowplan-token-count"] == "upstream"
    message = await client.messages.create(model=PRO_CLAUDE, max_tokens=5, messages=QUESTION, system="Be brief.")
    assert counted.input_tokens == message.usage.input_tokens + (message.usage.cache_read_input_tokens or 0)
    # The Pro plan allows 10 calls a minute: twelve counts later a model call is still admitted,
    # and only the one model call is metered.
    for _ in range(12):
        assert (await client.messages.count_tokens(model=PRO_CLAUDE, messages=QUESTION)).input_tokens > 0
    await client.messages.create(model=PRO_CLAUDE, max_tokens=5, messages=QUESTION)
    events = await metered(stack, account["key"], 2)
    assert len(events) == 2 and {e["model"] for e in events} == {PRO_CLAUDE}


async def test_count_tokens_is_estimated_when_the_upstream_does_not_count(stack: Stack) -> None:
    account = await stack.create_account()
    raw = await claude(stack, account["key"]).messages.with_raw_response.count_tokens(
        model=FREE_MODEL, messages=[{"role": "user", "content": "x" * 400}]
    )
    assert raw.headers["x-flowplan-token-count"] == "estimate"
    assert 100 <= (await raw.parse()).input_tokens <= 110  # 400 bytes of text and some JSON, 4 bytes a token


async def test_count_tokens_refusals_in_anthropics_shape(stack: Stack) -> None:
    account = await stack.create_account()
    with pytest.raises(anthropic.AuthenticationError):
        await claude(stack, "sk-ss-v1-nope").messages.count_tokens(model=PRO_CLAUDE, messages=QUESTION)
    client = claude(stack, account["key"])
    with pytest.raises(anthropic.NotFoundError) as unknown:
        await client.messages.count_tokens(model="nobody/nothing", messages=QUESTION)
    assert unknown.value.body["error"]["type"] == "not_found_error"
    with pytest.raises(anthropic.BadRequestError) as empty:
        await client.messages.count_tokens(model=PRO_CLAUDE, messages=[])
    assert "messages" in empty.value.body["error"]["message"]


async def test_models_list_in_anthropics_format_for_the_anthropic_sdk(stack: Stack) -> None:
    account = await pro_account(stack)
    client = claude(stack, account["key"])
    listed = [m async for m in client.models.list()]
    openai_listed = [m.id async for m in oai(stack, account["key"]).models.list()]
    assert [m.id for m in listed] == openai_listed and PRO_CLAUDE in openai_listed
    assert all(m.type == "model" and m.display_name and m.created_at for m in listed)
    first = await client.models.list(limit=2)
    assert [m.id for m in first.data] == openai_listed[:2] and first.has_more
    assert first.last_id == openai_listed[1]
    rest = await client.models.list(after_id=first.last_id, limit=1000)
    assert [m.id for m in rest.data] == openai_listed[2:] and not rest.has_more
    with pytest.raises(anthropic.AuthenticationError):
        await claude(stack, "sk-ss-v1-nope").models.list()
    with pytest.raises(openai.AuthenticationError):
        await oai(stack, "sk-ss-v1-nope").models.list()
