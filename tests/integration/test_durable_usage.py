"""The gateway's usage survives the gateway: a call's usage is stored before its last byte
reaches the client, whatever happens to the gateway process (SIGKILL, SIGTERM mid-stream) or to
JetStream (refusing writes)."""

import asyncio
import dataclasses
import random
import time
import uuid
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest
from nats.js import api

from libs.eventlog.publisher import EventPublisher, PubAck
from libs.localservers import LocalNats, LocalPostgres, free_port
from libs.settings import Settings
from libs.setup import set_up
from proto.v1 import UsageRecorded
from services.gateway.recorder import UsageNotStored, UsageRecorder
from services.gateway.usage import SseSplitter
from tests.integration.conftest import out_of_reach_plans
from tests.stack import ServiceProcess, Stack, eventually, make_settings, usage_event

pytestmark = pytest.mark.connected
MODEL = "deepseek/deepseek-chat"
_usage = msgspec.json.Decoder(UsageRecorded)


@pytest.fixture(scope="module")
async def settings(nats_server: LocalNats, postgres: LocalPostgres, workdir: Path) -> Settings:
    """Plans with RPM and caps out of reach: steady load and long streams are never refused."""
    path = out_of_reach_plans(workdir)
    base = postgres.url.rsplit("/", 1)[0]
    settings = make_settings(nats_server.url, f"{base}/flowplan_{uuid.uuid4().hex[:10]}")
    settings = msgspec.structs.replace(settings, plans_path=path)
    await set_up(settings)
    return settings


async def stored_usage(stack: Stack, account_id: str) -> list[UsageRecorded]:
    """Every UsageRecorded of the account in the event log, duplicates (if any) included."""
    nc = await stack.nats()
    events: list[UsageRecorded] = []
    try:
        js = nc.jetstream()
        subject = f"flowplan.p.*.usage.{account_id}.UsageRecorded"
        config = api.ConsumerConfig(ack_policy=api.AckPolicy.NONE, deliver_policy=api.DeliverPolicy.ALL)
        sub = await js.pull_subscribe(subject, stream=stack.settings.stream, config=config)
        try:
            while True:
                try:
                    msgs = await sub.fetch(500, timeout=1)
                except TimeoutError:
                    break
                events += [_usage.decode(msg.data) for msg in msgs]
        finally:
            await sub.unsubscribe()
    finally:
        await nc.close()
    return events


def chat(max_tokens: int, stream: bool = False) -> dict[str, Any]:
    go = [{"role": "user", "content": f"go [[tokens:{max_tokens}]]"}]  # an exact length
    body: dict[str, Any] = {"model": MODEL, "max_tokens": max_tokens, "messages": go}
    if stream:
        body["stream"] = True
    return body


async def test_every_call_answered_200_has_exactly_one_usage_event_across_sigkills(stack: Stack) -> None:
    account = await stack.create_account("kill-9")
    headers = {"Authorization": f"Bearer {account['key']}"}
    answered: list[str | None] = []  # the request ids of the calls answered 200
    statuses: Counter[str] = Counter()
    stop = asyncio.Event()

    async def client(session: aiohttp.ClientSession) -> None:
        while not stop.is_set():
            try:
                url = f"{stack.gateway_url}/v1/chat/completions"
                async with session.post(url, json=chat(8), headers=headers) as response:
                    await response.read()
                    statuses[str(response.status)] += 1
                    if response.status == 200:
                        answered.append(response.headers.get("x-flowplan-request-id"))
            except (aiohttp.ClientError, OSError):
                statuses["connection error"] += 1
                await asyncio.sleep(0.05)

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        load = [asyncio.create_task(client(session)) for _ in range(12)]
        try:
            for _ in range(8):
                before = len(answered)
                await asyncio.sleep(random.uniform(0.8, 1.6))
                assert len(answered) > before, statuses  # the load is running when it is killed
                stack.gateway.kill()  # SIGKILL mid-load: calls in every stage of their life
                await asyncio.to_thread(stack.gateway.start)
            await asyncio.sleep(1)
        finally:
            stop.set()
            await asyncio.gather(*load)
    assert len(answered) > 100, statuses
    assert statuses["connection error"] > 0, statuses  # the kills did land on calls in flight

    async def all_stored() -> Counter[str]:
        counts = Counter(event.event_id for event in await stored_usage(stack, account["account_id"]))
        enough = counts.total() >= len(answered) and all(rid is not None and counts[rid] for rid in answered)
        return counts if enough else Counter()

    try:
        counts = await eventually(all_stored, within=30)
    except AssertionError:
        counts = Counter(event.event_id for event in await stored_usage(stack, account["account_id"]))
        lost = [rid for rid in answered if rid is None or not counts[rid]]
        raise AssertionError(
            f"{len(answered)} calls answered 200, {counts.total()} usage events stored; "
            f"{len(lost)} answered calls without theirs: {lost[:5]}"
        ) from None
    assert all(rid is not None and counts[rid] == 1 for rid in answered)
    assert max(counts.values()) == 1  # and nothing stored twice
    # Calls killed after their usage was stored but before their answer left are billed and got
    # no 200: at most the calls in flight at each kill.
    assert len(counts) - len(answered) <= 12 * 8


async def test_while_jetstream_refuses_writes_calls_get_503_and_admission_resumes(stack: Stack) -> None:
    account = await stack.create_account("refused")
    headers = {"Authorization": f"Bearer {account['key']}"}
    url = f"{stack.gateway_url}/v1/chat/completions"
    nc = await stack.nats()
    js = nc.jetstream()
    config = (await js.stream_info(stack.settings.stream)).config
    full = await js.stream_info(stack.settings.stream)
    async with aiohttp.ClientSession() as session:

        async def call() -> tuple[int, Any, Any]:
            async with session.post(url, json=chat(8), headers=headers) as response:
                return response.status, response.headers.copy(), await response.json(content_type=None)

        assert (await call())[0] == 200
        logged = stack.gateway.log().count("not stored yet")
        try:
            # The stream is full (discard=new): JetStream refuses every publish.
            await js.update_stream(dataclasses.replace(config, max_msgs=full.state.messages))
            held = asyncio.create_task(call())  # ran before the gateway knew: its answer waits for its usage

            async def held_back() -> bool:  # the gateway found out: JetStream refused its usage
                return stack.gateway.log().count("not stored yet") > logged

            await eventually(held_back, within=30)

            async def refused() -> tuple[int, Any, Any] | None:
                status, reply_headers, body = await call()
                return (status, reply_headers, body) if status == 503 else None

            status, reply_headers, body = await eventually(refused, within=30)
            assert body["error"]["code"] == "service_unavailable", body
            assert int(reply_headers.get("retry-after", 0)) > 0, body
            assert not held.done()  # no 200 for a call whose usage is not stored
        finally:
            await js.update_stream(dataclasses.replace(config, max_msgs=-1))
        status, reply_headers, body = await asyncio.wait_for(held, 30)
        assert status == 200, body
        held_id = reply_headers["x-flowplan-request-id"]

        async def admitted() -> bool:
            return (await call())[0] == 200

        await eventually(admitted, within=30)
    await nc.close()
    stored = [event.event_id for event in await stored_usage(stack, account["account_id"])]
    assert stored.count(held_id) == 1


async def received(response: aiohttp.ClientResponse, protocol: str, first: bytes) -> tuple[int, bool]:
    """Read a stream to its end (or its cut): the content deltas the client got, and whether it
    got the stream's proper ending."""
    splitter, deltas, ended = SseSplitter(), 0, False

    async def chunks() -> Any:
        yield first
        async for chunk in response.content.iter_any():
            yield chunk

    try:
        async for chunk in chunks():
            for event in splitter.feed(chunk):
                data = event.data
                if protocol == "anthropic":
                    deltas += isinstance(data, dict) and data.get("type") == "content_block_delta"
                    ended |= isinstance(data, dict) and data.get("type") == "message_stop"
                else:
                    ended |= b"[DONE]" in event.raw
                    choices = data.get("choices") if isinstance(data, dict) else None
                    deltas += bool(choices and (choices[0].get("delta") or {}).get("content"))
    except aiohttp.ClientError:
        pass
    return deltas, ended


async def start_stream(
    stack: Stack, session: aiohttp.ClientSession, key: str, protocol: str, max_tokens: int
) -> aiohttp.ClientResponse:
    if protocol == "anthropic":
        path, body = "/v1/messages", chat(max_tokens, stream=True)
    else:
        path, body = "/v1/chat/completions", chat(max_tokens, stream=True)
    response = await session.post(stack.gateway_url + path, json=body, headers={"Authorization": f"Bearer {key}"})
    assert response.status == 200, await response.text()
    return response


async def usage_of(stack: Stack, account_id: str) -> UsageRecorded:
    """The usage of the account's one call (each test's account makes one)."""

    async def found() -> list[UsageRecorded]:
        return await stored_usage(stack, account_id)

    events: list[UsageRecorded] = await eventually(found, within=30)
    [event] = events
    return event


@pytest.fixture
async def paced(stack: Stack) -> Any:
    """The upstream at 200 tokens/s, as in the outside run; the gateway restarted with `grace`."""
    stack.simulator.stop()
    await asyncio.to_thread(stack.simulator.start, {"FLOWPLAN_SIMULATOR_TOKENS_PER_S": "200"})

    async def restart_gateway(grace_s: float) -> None:
        stack.gateway.stop()
        await asyncio.to_thread(stack.gateway.start, {"FLOWPLAN_SHUTDOWN_GRACE_S": str(grace_s)})

    yield restart_gateway
    stack.simulator.stop()
    await asyncio.to_thread(stack.simulator.start)
    if stack.gateway.process is None:
        await asyncio.to_thread(stack.gateway.start)


async def test_sigterm_during_a_stream_lets_it_finish_within_the_grace_and_bills_it(stack: Stack, paced: Any) -> None:
    await paced(60)
    account = await stack.create_account("sigterm-finish")
    async with aiohttp.ClientSession() as session:
        response = await start_stream(stack, session, account["key"], "openai", 2000)  # 10 s at 200 tokens/s
        first = await response.content.readany()
        assert stack.gateway.process is not None
        stack.gateway.process.terminate()
        deltas, ended = await received(response, "openai", first)
    assert (deltas, ended) == (2000, True)  # the whole stream, to its [DONE]
    assert await asyncio.to_thread(stack.gateway.wait_exit, 60) == 0
    assert (await usage_of(stack, account["account_id"])).output_tokens == 2000


@pytest.mark.parametrize("protocol", ["openai", "anthropic"])
async def test_a_stream_the_gateway_cuts_at_shutdown_is_billed_for_what_the_client_got(
    stack: Stack, paced: Any, protocol: str
) -> None:
    """The 12,000-token stream at 200 tokens/s (a minute) and a SIGTERM: cut at the grace's end,
    billed for the tokens its client received, never for what the upstream went on generating."""
    await paced(4)
    account = await stack.create_account("sigterm-cut")
    async with aiohttp.ClientSession() as session:
        response = await start_stream(stack, session, account["key"], protocol, 12_000)
        first = await response.content.readany()
        assert stack.gateway.process is not None
        stack.gateway.process.terminate()
        started = time.monotonic()
        deltas, ended = await received(response, protocol, first)
        cut_after = time.monotonic() - started
    assert not ended and 0 < deltas < 12_000 and cut_after < 30
    assert await asyncio.to_thread(stack.gateway.wait_exit, 60) == 0
    event = await usage_of(stack, account["account_id"])
    assert event.output_tokens == deltas
    assert event.input_tokens > 0  # as the upstream reported it at the start, else estimated from the request


class CountingPublisher(EventPublisher):
    """The real publisher, counting its round trips to JetStream."""

    rounds = 0

    async def publish(self, events: Any, parents: Any = None) -> list[PubAck]:
        self.rounds += 1
        return await super().publish(events, parents)


def a_call(account_id: str) -> UsageRecorded:
    return UsageRecorded(
        event_id=f"gw_{uuid.uuid4().hex}", account_id=account_id, occurred_at=datetime.now(UTC), model=MODEL,
        input_tokens=10, output_tokens=5, billing_mode="subscription", usd_cost_micros=1, flows_micros=40,
        usd_per_flow="5/198", multiplier="1", reservation_id=None, source="gateway",
    )  # fmt: skip


async def test_concurrent_calls_share_publish_round_trips_and_each_returns_once_stored(stack: Stack) -> None:
    account_id = (await stack.create_account("group-commit"))["account_id"]
    nc = await stack.nats()
    publisher = CountingPublisher(nc, stack.settings.stream)
    await publisher.start()
    recorder = UsageRecorder(publisher)
    flusher = asyncio.create_task(recorder.run())
    try:
        await asyncio.gather(*(recorder.store(a_call(account_id)) for _ in range(300)))
        assert len(await stored_usage(stack, account_id)) == 300  # stored when store() returned
        assert publisher.rounds <= 5  # not one round trip per call
    finally:
        flusher.cancel()
        await nc.close()


class GatedPublisher(EventPublisher):
    """The real publisher, holding every publish until the gate opens, counting those waiting."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.gate = asyncio.Event()
        self.waiting = 0

    async def publish(self, events: Any, parents: Any = None) -> list[PubAck]:
        self.waiting += 1
        await self.gate.wait()
        return await super().publish(events, parents)


async def test_a_batch_goes_out_while_another_waits_for_its_ack(stack: Stack) -> None:
    """A call's usage waits about one round trip, not also for the batch ahead of it."""
    account_id = (await stack.create_account("in-flight"))["account_id"]
    nc = await stack.nats()
    publisher = GatedPublisher(nc, stack.settings.stream)
    await publisher.start()
    recorder = UsageRecorder(publisher, max_in_flight=2)
    flusher = asyncio.create_task(recorder.run())

    async def publishing(n: int) -> Any:
        async def check() -> bool:
            return publisher.waiting == n

        return await eventually(check, within=5)

    try:
        first = asyncio.create_task(recorder.store(a_call(account_id)))
        await publishing(1)
        second = asyncio.create_task(recorder.store(a_call(account_id)))
        await publishing(2)  # the second batch did not wait for the first one's ack
        third = asyncio.create_task(recorder.store(a_call(account_id)))
        await asyncio.sleep(0.3)
        assert publisher.waiting == 2  # both slots taken: the third waits in the next batch
        publisher.gate.set()
        await asyncio.gather(first, second, third)
        assert publisher.waiting == 3 and len(await stored_usage(stack, account_id)) == 3
    finally:
        flusher.cancel()
        await nc.close()


async def test_usage_jetstream_will_not_store_is_retried_then_given_up_at_the_bound(stack: Stack) -> None:
    account_id = (await stack.create_account("bound"))["account_id"]
    nc = await stack.nats()
    js = nc.jetstream()
    publisher = EventPublisher(nc, stack.settings.stream)
    await publisher.start()
    recorder = UsageRecorder(publisher, store_timeout_s=2.0)
    flusher = asyncio.create_task(recorder.run())
    info = await js.stream_info(stack.settings.stream)
    try:
        await js.update_stream(dataclasses.replace(info.config, max_msgs=info.state.messages))
        call = asyncio.create_task(recorder.store(a_call(account_id)))

        async def refusing() -> bool:
            return not recorder.accepting

        await eventually(refusing, within=10)  # no new calls admitted meanwhile
        with pytest.raises(UsageNotStored):
            await asyncio.wait_for(call, 30)
        assert recorder.accepting  # half-open: the next call finds out whether JetStream stores again
    finally:
        await js.update_stream(dataclasses.replace(info.config, max_msgs=-1))
    try:
        await recorder.store(a_call(account_id))  # JetStream stores again: so does the recorder
        assert recorder.accepting and len(await stored_usage(stack, account_id)) == 1
    finally:
        flusher.cancel()
        await nc.close()


async def test_the_queued_design_is_bounded_too(stack: Stack) -> None:
    account_id = (await stack.create_account("queued"))["account_id"]
    nc = await stack.nats()
    js = nc.jetstream()
    publisher = EventPublisher(nc, stack.settings.stream)
    await publisher.start()
    recorder = UsageRecorder(publisher, durable=False, max_pending=2, store_timeout_s=30.0)
    flusher = asyncio.create_task(recorder.run())
    info = await js.stream_info(stack.settings.stream)
    try:
        await js.update_stream(dataclasses.replace(info.config, max_msgs=info.state.messages))
        await recorder.store(a_call(account_id))
        await recorder.store(a_call(account_id))
        third = asyncio.create_task(recorder.store(a_call(account_id)))
        done, _ = await asyncio.wait({third}, timeout=1.0)
        assert not done  # no room: the caller waits instead of growing a queue
    finally:
        await js.update_stream(dataclasses.replace(info.config, max_msgs=-1))
    try:
        await asyncio.wait_for(third, 30)  # room again once the first two are stored
    finally:
        flusher.cancel()
        await nc.close()


# -- two instances of each stateless service -------------------------------------------------------


def second_instance(stack: Stack, service: ServiceProcess, port_variable: str) -> ServiceProcess:
    """Another process of the same service on its own port (its log beside the first one's)."""
    port = free_port()
    other = ServiceProcess(service.name, {**service.env, port_variable: str(port)}, port, service.log_path.parent)
    other.log_path = service.log_path.with_name(f"{service.name}-2.log")
    return other


async def test_two_gateways_and_two_ingresses_share_the_load_and_one_of_each_killed_loses_nothing(
    stack: Stack,
) -> None:
    gateway2 = second_instance(stack, stack.gateway, "FLOWPLAN_GATEWAY_PORT")
    ingress2 = second_instance(stack, stack.ingress, "FLOWPLAN_INGRESS_PORT")
    await asyncio.gather(asyncio.to_thread(gateway2.start), asyncio.to_thread(ingress2.start))
    gateways = [stack.gateway_url, f"http://127.0.0.1:{gateway2.port}"]
    ingresses = [stack.base, f"http://127.0.0.1:{ingress2.port}"]
    admin = {"Authorization": f"Bearer {stack.settings.admin_token}"}
    ingest = {"Authorization": f"Bearer {stack.settings.ingest_token}"}
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

            async def post(url: str, body: Any, headers: dict[str, str], method: str = "POST") -> tuple[int, Any]:
                async with session.request(method, url, json=body, headers=headers) as response:
                    return response.status, await response.json(content_type=None)

            # What one instance changed, the other knows: accounts and multipliers set through the
            # first are used by the second to price usage (a metering client may reach either).
            accounts, priced = [], {}
            for i in range(6):
                first, other = ingresses[i % 2], ingresses[(i + 1) % 2]
                status, account = await post(f"{first}/admin/v1/accounts", {"name": f"two-{i}"}, admin)
                assert status == 201, account
                accounts.append(account)
                url = f"{first}/admin/v1/accounts/{account['account_id']}/multiplier"
                status, body = await post(url, {"multiplier": "2"}, admin, "PUT")
                assert status == 200, body
                event = usage_event(account["account_id"], model=MODEL)

                async def accepted(other: str = other, event: dict[str, Any] = event) -> bool:
                    status, body = await post(f"{other}/v1/usage", {"events": [event]}, ingest)
                    assert status in (202, 400), body  # 400: not known there (yet)
                    return status == 202

                await eventually(accepted, within=10)
                priced[f"default/{account['account_id']}/{event['event_id']}"] = account["account_id"]
            for stored_id, account_id in priced.items():
                [usage] = [e for e in await stored_usage(stack, account_id) if e.event_id == stored_id]
                assert usage.multiplier == "2", usage

            answered: dict[str, list[str]] = {url: [] for url in gateways}
            acked: dict[str, list[str]] = {url: [] for url in ingresses}
            alive = {url: True for url in gateways + ingresses}
            statuses: Counter[str] = Counter()
            stop = asyncio.Event()

            async def caller(n: int) -> None:
                while not stop.is_set():
                    n += 1
                    account = accounts[n % len(accounts)]
                    # the tests' round-robin: the next live instance; a refused connection goes to the other
                    for url in sorted(gateways, key=lambda u: (not alive[u], (gateways.index(u) + n) % 2)):
                        try:
                            async with session.post(
                                f"{url}/v1/chat/completions",
                                json=chat(8),
                                headers={"Authorization": f"Bearer {account['key']}"},
                            ) as response:
                                await response.read()
                                statuses[f"gateway {response.status}"] += 1
                                if response.status == 200:
                                    answered[url].append(response.headers["x-flowplan-request-id"])
                                break
                        except (aiohttp.ClientError, OSError):
                            statuses["gateway connection error"] += 1

            async def metering(n: int) -> None:
                while not stop.is_set():
                    n += 1
                    batch = [usage_event(accounts[(n + i) % len(accounts)]["account_id"]) for i in range(10)]
                    for attempt in range(100):
                        url = sorted(ingresses, key=lambda u: (not alive[u], (ingresses.index(u) + n + attempt) % 2))[0]
                        try:
                            status, body = await post(f"{url}/v1/usage", {"events": batch}, ingest)
                        except (aiohttp.ClientError, OSError):
                            status, body = 0, None
                        statuses[f"ingest {status}"] += 1
                        if status == 202:
                            acked[url] += [f"default/{e['account_id']}/{e['event_id']}" for e in batch]
                            break
                        assert status in (0, 503), body
                        await asyncio.sleep(0.05)
                    else:
                        raise AssertionError("a usage batch was never stored")

            load = [*(asyncio.create_task(caller(i)) for i in range(8)), asyncio.create_task(metering(0))]
            try:
                await eventually(lambda: _true(all(len(v) > 10 for v in [*answered.values(), *acked.values()])))
                # SIGKILL mid-load: the second gateway, and the first ingress, which runs the ingress
                # projection (it started first and holds its lease)
                gateway2.kill()
                stack.ingress.kill()
                alive[gateways[1]] = alive[ingresses[0]] = False  # what the balancer's health check finds
                served = len(answered[gateways[0]]), len(acked[ingresses[1]])

                async def survivors_serve() -> bool:
                    return len(answered[gateways[0]]) > served[0] + 30 and len(acked[ingresses[1]]) > served[1] + 50

                await eventually(survivors_serve)
            finally:
                stop.set()
                await asyncio.gather(*load)
        # The surviving ingress took the projection over: what it records reaches Postgres.
        assert stack.ingress.process is None
        async with aiohttp.ClientSession() as session:
            async with session.post(
                f"{ingresses[1]}/admin/v1/accounts", json={"name": "after-the-kill"}, headers=admin
            ) as response:
                assert response.status == 201
                created = (await response.json())["account_id"]

        async def projected() -> bool:
            conn = await stack.db()
            try:
                return bool(await conn.fetchval("SELECT count(*) FROM ingress.accounts WHERE account_id = $1", created))
            finally:
                await conn.close()

        await eventually(projected, within=15)
        assert "ingress projection: runs in this instance" in stack.ingress.log()
        assert "ingress projection: runs in this instance" in ingress2.log()
    finally:
        gateway2.stop()
        ingress2.stop()
        if stack.ingress.process is None:
            await asyncio.to_thread(stack.ingress.start)  # the module's stack, for what runs after

    everything = [rid for calls in answered.values() for rid in calls] + [e for ids in acked.values() for e in ids]
    counts: Counter[str] = Counter()

    async def all_stored() -> bool:
        counts.clear()
        for account in accounts:
            counts.update(e.event_id for e in await stored_usage(stack, account["account_id"]))
        return all(counts[event_id] for event_id in everything)

    await eventually(all_stored, within=30)
    print(
        f"\ntwo gateways and two ingresses, the second gateway and the first ingress killed ({dict(statuses)}): "
        f"200s per gateway {[len(v) for v in answered.values()]}, "
        f"events acknowledged per ingress {[len(v) for v in acked.values()]}"
    )
    assert all(counts[event_id] == 1 for event_id in everything)  # every 200 and every 202 once
    assert max(counts.values()) == 1
    # usage stored for calls the kill cut before their answer: at most those in flight then
    assert len(set(counts) - set(everything) - set(priced)) <= 8


async def _true(value: bool) -> bool:
    return value
