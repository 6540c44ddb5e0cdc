"""The gateway as users meet it: the official openai and anthropic SDKs against the running stack."""

import asyncio
import subprocess
import time
import uuid
from datetime import UTC, datetime, timedelta

import aiohttp
import anthropic
import openai
import pytest

from libs import apikeys
from libs.eventlog.publisher import EventPublisher
from libs.localservers import LocalPostgres
from libs.pricing.money import MICRO
from proto.v1 import KeyRevoked
from tests.e2e.conftest import CATALOG, FREE_MODEL, PRO_CLAUDE, claude, flows_of, metered, oai, pro_account, raw_stream
from tests.stack import Stack, eventually, usage_event

pytestmark = pytest.mark.connected


async def test_openai_calls_are_metered_to_the_exact_flows(stack: Stack) -> None:
    account = await stack.create_account()
    client = oai(stack, account["key"])
    messages = [{"role": "user", "content": "Write a haiku about event sourcing [[cached:2]] [[tokens:40]]"}]
    raw = await client.chat.completions.with_raw_response.create(model=FREE_MODEL, messages=messages, max_tokens=40)
    completion = raw.parse()
    assert completion.usage is not None and completion.usage.completion_tokens == 40
    assert raw.headers["x-flowplan-billing-mode"] == "subscription"
    assert float(raw.headers["x-flowplan-flows-remaining"]) < 5
    assert datetime.fromisoformat(raw.headers["x-flowplan-window-resets-at"]) > datetime.now(UTC)
    cached = completion.usage.prompt_tokens_details.cached_tokens if completion.usage.prompt_tokens_details else 0
    want_one = flows_of(FREE_MODEL, completion.usage.prompt_tokens - cached, 40, cached)

    # The same call streamed, without asking for usage: the client sees no usage chunk,
    # the gateway still meters the upstream's own report.
    stream = await client.chat.completions.create(model=FREE_MODEL, messages=messages, max_tokens=40, stream=True)
    chunks = [chunk async for chunk in stream]
    assert all(chunk.usage is None for chunk in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == completion.choices[0].message.content

    events = await metered(stack, account["key"], 2)
    assert [e["flows"] for e in events] == [want_one / MICRO] * 2
    assert {e["cached_tokens"] for e in events} == {cached}
    usage = await stack.usage(account["key"])
    assert usage["window_5h"]["used_flows"] == 2 * want_one / MICRO


async def test_stream_with_usage_requested_keeps_the_usage_chunk(stack: Stack) -> None:
    account = await stack.create_account()
    stream = await oai(stack, account["key"]).chat.completions.create(
        model=FREE_MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=5, stream=True,
        stream_options={"include_usage": True},
    )  # fmt: skip
    chunks = [chunk async for chunk in stream]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 5


async def test_anthropic_calls_stream_and_not_are_metered(stack: Stack) -> None:
    account = await pro_account(stack)
    client = claude(stack, account["key"])
    message = await client.messages.create(
        model=PRO_CLAUDE, max_tokens=30, messages=[{"role": "user", "content": "Explain GCRA briefly [[tokens:30]]"}]
    )
    assert message.usage.output_tokens == 30
    async with client.messages.stream(
        model=PRO_CLAUDE, max_tokens=30, messages=[{"role": "user", "content": "Explain GCRA briefly [[tokens:30]]"}]
    ) as stream:
        text = "".join([t async for t in stream.text_stream])
        final = await stream.get_final_message()
    assert text == message.content[0].text and final.usage.output_tokens == 30
    want = flows_of(PRO_CLAUDE, message.usage.input_tokens, 30, message.usage.cache_read_input_tokens or 0)
    events = await metered(stack, account["key"], 2)
    assert [e["flows"] for e in events] == [want / MICRO] * 2
    assert all(e["model"] == PRO_CLAUDE and e["key_id"] == account["key_id"] for e in events)


async def test_claude_code_style_x_api_key_works(stack: Stack) -> None:
    account = await pro_account(stack)
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{stack.gateway_url}/v1/messages",
            headers={"x-api-key": account["key"], "anthropic-version": "2023-06-01"},
            json={"model": PRO_CLAUDE, "max_tokens": 3, "messages": [{"role": "user", "content": "hi"}]},
        ) as response,
    ):
        assert response.status == 200
        assert (await response.json())["usage"]["output_tokens"] == 3


async def test_refusals_surface_as_the_sdks_typed_errors(stack: Stack) -> None:
    with pytest.raises(openai.AuthenticationError) as bad_key:
        await oai(stack, "sk-ss-v1-not-a-real-key").chat.completions.create(
            model=FREE_MODEL, messages=[{"role": "user", "content": "hi"}]
        )
    assert bad_key.value.code == "invalid_api_key"
    with pytest.raises(anthropic.AuthenticationError):
        await claude(stack, "nope").messages.create(model=PRO_CLAUDE, max_tokens=5, messages=[])
    free = await stack.create_account()
    with pytest.raises(openai.PermissionDeniedError) as not_in_plan:
        await oai(stack, free["key"]).chat.completions.create(
            model="openai/gpt-5-pro", messages=[{"role": "user", "content": "hi"}]
        )
    assert not_in_plan.value.code == "model_not_in_plan"
    with pytest.raises(anthropic.PermissionDeniedError):
        await claude(stack, free["key"]).messages.create(
            model=PRO_CLAUDE, max_tokens=5, messages=[{"role": "user", "content": "hi"}]
        )
    status, payg = await stack.http(
        "POST", "/v1/keys", token=free["management_key"], json={"name": "payg", "kind": "payg"}
    )
    assert status == 201 and payg["key"].startswith("sk-pg-v1-")
    with pytest.raises(openai.APIStatusError) as broke:
        await oai(stack, payg["key"]).chat.completions.create(
            model=FREE_MODEL, messages=[{"role": "user", "content": "hi"}]
        )
    assert broke.value.status_code == 402 and broke.value.code == "insufficient_balance"


async def test_fourteen_quick_calls_on_a_ten_rpm_plan(stack: Stack) -> None:
    account = await stack.create_account()
    client = oai(stack, account["key"])
    results = []
    for _ in range(14):
        try:
            await client.chat.completions.create(model=FREE_MODEL, messages=[{"role": "user", "content": "x"}],
                                                 max_tokens=1)  # fmt: skip
            results.append("ok")
        except openai.RateLimitError as exc:
            assert exc.code == "rate_limit_exceeded"
            assert 1 <= int(exc.response.headers["retry-after"]) <= 60
            assert exc.response.headers["x-ratelimit-limit-requests"] == "10"
            results.append("limited")
    assert results.count("ok") <= 10 and results.count("limited") >= 4


async def test_a_free_account_sees_exactly_the_free_models(stack: Stack) -> None:
    account = await stack.create_account()
    models = [m async for m in oai(stack, account["key"]).models.list()]
    free = {m.id for m in CATALOG.models.values() if m.tier == "free"}
    assert {m.id for m in models} == free and len(models) == 12
    assert all(set(m.pricing) >= {"prompt", "completion", "input_cache_read", "image", "request_flows"} for m in models)


async def test_revoked_and_rotated_keys_are_refused_within_a_second(stack: Stack) -> None:
    account = await stack.create_account()
    status, extra = await stack.http(
        "POST", "/v1/keys", token=account["management_key"], json={"name": "ci", "kind": "subscription"}
    )
    assert status == 201
    client = oai(stack, extra["key"])
    hi = {"model": FREE_MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
    await client.chat.completions.create(**hi)  # cached in the gateway now
    status, _ = await stack.http("DELETE", f"/v1/keys/{extra['id']}", token=account["management_key"])
    assert status == 200
    revoked_at = time.monotonic()
    with pytest.raises(openai.AuthenticationError):
        await client.chat.completions.create(**hi)
    assert time.monotonic() - revoked_at < 1.0

    await oai(stack, account["key"]).chat.completions.create(**hi)
    status, rotated = await stack.http("POST", f"/v1/keys/{account['key_id']}/rotate", token=account["management_key"])
    assert status == 201 and rotated["key"] != account["key"] and rotated["id"] == account["key_id"]
    rotated_at = time.monotonic()
    with pytest.raises(openai.AuthenticationError):
        await oai(stack, account["key"]).chat.completions.create(**hi)
    assert time.monotonic() - rotated_at < 1.0
    await oai(stack, rotated["key"]).chat.completions.create(**hi)

    status, listing = await stack.http("GET", "/v1/keys", token=rotated["key"])
    assert status == 200
    by_id = {k["id"]: k for k in listing["data"]}
    assert by_id[extra["id"]]["revoked_at"] is not None
    assert by_id[account["key_id"]]["last4"] == rotated["key"][-4:]
    assert set(by_id[account["key_id"]]) >= {"id", "name", "kind", "prefix", "last4", "created_at", "last_used_at"}

    async def last_used() -> bool:
        _, keys = await stack.http("GET", "/v1/keys", token=rotated["key"])
        return any(k["id"] == account["key_id"] and k["last_used_at"] for k in keys["data"])

    await eventually(last_used)


async def test_exhausted_five_hour_window_and_week_refuse_with_retry_after(stack: Stack) -> None:
    now = datetime.now(UTC)
    window = await stack.create_account()
    opened = now - timedelta(hours=4)
    heavy = dict(model="z-ai/glm-4.7", input_tokens=1_000_000, output_tokens=200_000)
    assert (await stack.post_usage([usage_event(window["account_id"], occurred_at=opened.isoformat(), **heavy)]))[
        0
    ] == 202
    week = await stack.create_account()
    weekly_events = [
        usage_event(week["account_id"], occurred_at=(now - timedelta(days=6, hours=-6 * i)).isoformat(), **heavy)
        for i in range(10)
    ]
    assert (await stack.post_usage(weekly_events))[0] == 202
    for account, resets in ((window, opened + timedelta(hours=5)), (week, now - timedelta(days=6) + timedelta(days=7))):

        async def over(key: str = account["key"]) -> bool:
            usage = await stack.usage(key)
            return usage["window_5h"]["remaining_flows"] == 0 or usage["weekly"]["remaining_flows"] == 0

        await eventually(over)
        with pytest.raises(openai.RateLimitError) as refused:
            await oai(stack, account["key"]).chat.completions.create(
                model=FREE_MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=1
            )
        assert refused.value.code == "quota_exhausted"
        retry_after = int(refused.value.response.headers["retry-after"])
        assert abs(retry_after - (resets - datetime.now(UTC)).total_seconds()) < 30


async def test_concurrent_calls_cannot_run_far_past_an_almost_empty_window(stack: Stack) -> None:
    account = await stack.create_account()
    # 4.695 of the 5 Flows already used; each call below costs about 0.27.
    seed = usage_event(account["account_id"], model="z-ai/glm-4.7", input_tokens=100_000, output_tokens=26_500)
    assert (await stack.post_usage([seed]))[0] == 202

    async def seeded() -> float:
        used = (await stack.usage(account["key"]))["window_5h"]["used_flows"]
        return used if used > 4 else 0

    before = await eventually(seeded)
    client = oai(stack, account["key"])
    one_call = flows_of("z-ai/glm-4.7", 20, 3000) / MICRO  # about 0.2 Flows each

    async def call() -> bool:
        try:
            story = [{"role": "user", "content": "a long story [[tokens:3000]]"}]
            await client.chat.completions.create(model="z-ai/glm-4.7", messages=story, max_tokens=3000)
            return True
        except openai.RateLimitError:
            return False

    admitted = sum(await asyncio.gather(*(call() for _ in range(8))))
    assert admitted == 2  # 4.695 + 0.27 reserved < 5 admits a second; 5.24 admits no third
    events = await metered(stack, account["key"], 1 + admitted)
    used = sum(e["flows"] for e in events)
    assert used >= before
    assert used <= 5 + 1.5 * one_call  # past the cap by at most about one call, never by eight


async def test_a_client_that_hangs_up_mid_stream_is_still_billed(stack: Stack) -> None:
    account = await stack.create_account()
    async with aiohttp.ClientSession() as session:
        response = await raw_stream(stack, session, account["key"], max_tokens=600)
        await response.content.readany()  # the first events, then hang up
        response.close()
    events = await metered(stack, account["key"], 1)
    assert events[0]["output_tokens"] == 600  # what the upstream generated, from its own report


async def test_image_generation_is_metered_per_image(stack: Stack) -> None:
    account = await pro_account(stack)
    images = await oai(stack, account["key"]).images.generate(model="nanobanana/nanobanana-pro", prompt="a fox", n=2)
    assert len(images.data) == 2
    events = await metered(stack, account["key"], 1)
    assert events[0]["images"] == 2
    assert events[0]["flows"] == flows_of("nanobanana/nanobanana-pro", events[0]["input_tokens"], 0, 0, 2) / MICRO


async def test_key_secrets_never_reach_postgres_the_stream_or_the_logs(stack: Stack, postgres: LocalPostgres) -> None:
    account = await stack.create_account("secret-keeper")
    status, created = await stack.http(
        "POST", "/v1/keys", token=account["management_key"], json={"name": "s", "kind": "payg"}
    )
    assert status == 201
    status, rotated = await stack.http("POST", f"/v1/keys/{created['id']}/rotate", token=account["management_key"])
    assert status == 201
    await oai(stack, account["key"]).chat.completions.create(
        model=FREE_MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=1
    )
    await metered(stack, account["key"], 1)
    secrets = [account["key"], created["key"], rotated["key"]]
    dump = (
        await asyncio.to_thread(
            subprocess.run,
            [str(postgres.bin_dir / "pg_dump"), stack.settings.database_url],
            capture_output=True,
            check=True,
        )
    ).stdout.decode()
    assert "keys" in dump and account["key_id"] in dump
    nc = await stack.nats()
    try:
        js = nc.jetstream()
        info = await js.stream_info(stack.settings.stream)
        stream = b"".join([(await js.get_msg(stack.settings.stream, seq)).data or b""
                           for seq in range(info.state.first_seq, info.state.last_seq + 1)])  # fmt: skip
    finally:
        await nc.close()
    logs = "".join(service.log() for service in (stack.ingress, stack.keys, stack.gateway, stack.quota))
    for secret in secrets:
        body = secret[len("sk-ss-v1-") :]
        assert body not in dump
        assert body.encode() not in stream
        assert body not in logs


async def test_bad_requests_get_4xx_in_the_sdk_shape(stack: Stack) -> None:
    account = await stack.create_account()
    client = oai(stack, account["key"])
    with pytest.raises(openai.NotFoundError):
        await client.chat.completions.create(model="no/such-model", messages=[{"role": "user", "content": "hi"}])
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {account['key']}"}) as session:
        for body, status in ((b"{not json", 400), (b"[1, 2]", 400), (b'{"messages": []}', 400),
                             (b" " * (stack.settings.max_body_bytes + 1), 413)):  # fmt: skip
            async with session.post(f"{stack.gateway_url}/v1/chat/completions", data=body) as response:
                assert response.status == status
                error = (await response.json())["error"]
                assert error["type"] == "invalid_request_error" and error["message"]
        async with session.post(
            f"{stack.gateway_url}/v1/messages", data=b"{oops", headers={"anthropic-version": "2023-06-01"}
        ) as response:
            assert response.status == 400
            assert (await response.json())["type"] == "error"


async def test_a_revocation_whose_broadcast_is_missed_still_takes_effect_within_a_second(stack: Stack) -> None:
    """The KeyCache re-asks after 1 s: a KeyRevoked that reaches the log without the keys
    service's broadcast (here published straight to the stream) cannot keep the key alive."""
    account = await stack.create_account()
    client = oai(stack, account["key"])
    hi = {"model": FREE_MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
    await client.chat.completions.create(**hi)
    nc = await stack.nats()
    try:
        publisher = EventPublisher(nc, stack.settings.stream)
        await publisher.start()
        key_hash = apikeys.hash_secret(account["key"])
        await publisher.publish([KeyRevoked(event_id=uuid.uuid4().hex, account_id=account["account_id"],
                                            occurred_at=datetime.now(UTC), key_id=account["key_id"],
                                            key_hash=key_hash)])  # fmt: skip
    finally:
        await nc.close()
    # No broadcast came: the cached key is trusted for at most 1 s more (+ the projection's lag).
    await asyncio.sleep(1.3)
    with pytest.raises(openai.AuthenticationError):
        await client.chat.completions.create(**hi)


async def test_an_upstream_that_breaks_off_mid_stream_still_gets_the_call_billed(stack: Stack) -> None:
    account = await stack.create_account()
    async with aiohttp.ClientSession() as session:
        response = await raw_stream(stack, session, account["key"], max_tokens=4000)
        received = await response.content.readany()
        while received.count(b"data:") < 50:
            received += await response.content.readany()
        stack.simulator.kill()  # the provider goes away mid-stream
        try:
            await response.read()
        except aiohttp.ClientError:
            pass
        response.close()
    try:
        [event] = await metered(stack, account["key"], 1)
        assert 40 < event["output_tokens"] < 4000  # what was streamed before the break, counted
    finally:
        await asyncio.to_thread(stack.simulator.start)
