"""The generated Python bindings against a real ferry-server: send and receive, exactly-once across a
server restart (outbox), rebind, token refresh, typed errors. Each test runs its coroutine with
asyncio.run under a timeout."""

import asyncio
import time

import pytest

from ferry_ffi import (ClientBuilder, ConnectionState, Event, FerryError, SendFailure, TokenRefreshError,
                       TokenRefresher)

WAIT_MS = 20_000
DM = "d:alice:bob"


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, timeout=120))


async def client(server, user, device="phone", store=None, token=None, refresher=None):
    b = (ClientBuilder().endpoint(server.address).ca_pem(server.ca_pem)
         .token(token or server.token(user, device)).device_id(device).backoff_ms(50, 500))
    if store is not None:
        b = b.store_path(str(store))
    if refresher is not None:
        b = b.token_refresher(refresher)
    return await b.build()


async def receive(c, count):
    """Messages until `count` arrived; fails with what it saw after WAIT_MS."""
    got, deadline = [], time.monotonic() + WAIT_MS / 1000
    while len(got) < count:
        left = int((deadline - time.monotonic()) * 1000)
        assert left > 0, "expected %d messages, got %r" % (count, [m.body for m in got])
        event = await c.next_event(left)
        if isinstance(event, Event.MESSAGE):
            got.append(event.message)
    return got


async def first_state(c):
    """The first connection state other than Connecting."""
    deadline = time.monotonic() + WAIT_MS / 1000
    while True:
        left = int((deadline - time.monotonic()) * 1000)
        assert left > 0, "no connection state within the timeout"
        event = await c.next_event(left)
        if isinstance(event, Event.CONNECTION) and not isinstance(event.state, ConnectionState.CONNECTING):
            return event.state


def test_send_and_receive(server):
    async def body():
        alice, bob = await client(server, "alice"), await client(server, "bob")
        assert await alice.wait_connected(WAIT_MS) and await bob.wait_connected(WAIT_MS)
        pending = await alice.send_text(DM, "hello bob")
        receipt = await pending.receipt()
        assert receipt.seq >= 1 and not receipt.duplicate
        [got] = await receive(bob, 1)
        assert (got.body, got.sender, got.seq) == (b"hello bob", "alice", receipt.seq)
        assert [m.body for m in await bob.history(DM, 0, 10)] == [b"hello bob"]
        assert alice.stats().outbox == 0 and alice.user_id() == "alice"
        await alice.shutdown()
        await bob.shutdown()
    run(body())


def test_exactly_once_across_server_restart(server, tmp_path):
    async def body():
        store = tmp_path / "alice.sqlite3"
        alice, bob = await client(server, "alice", store=store), await client(server, "bob")
        assert await alice.wait_connected(WAIT_MS) and await bob.wait_connected(WAIT_MS)
        server.stop()
        pending = [await alice.send_text(DM, "queued %d" % i) for i in range(1, 6)]
        assert alice.stats().outbox == 5
        await alice.shutdown()  # the app dies with the server down: the messages stay queued
        for p in pending:
            with pytest.raises(SendFailure.Interrupted):
                await p.receipt()
        server.start()
        again = await client(server, "alice", store=store)
        assert await again.flush(WAIT_MS), again.stats()
        got = await receive(bob, 5)
        assert [m.body for m in got] == [b"queued %d" % i for i in range(1, 6)]
        await (await again.send_text(DM, "marker")).receipt()
        [nxt] = await receive(bob, 1)
        assert nxt.body == b"marker", "a duplicate arrived"
        await again.shutdown()
        await bob.shutdown()
    run(body())


def test_rebind_keeps_the_session(server):
    async def body():
        alice, bob = await client(server, "alice"), await client(server, "bob")
        assert await alice.wait_connected(WAIT_MS) and await bob.wait_connected(WAIT_MS)
        await alice.rebind()
        await (await alice.send_text(DM, "after rebind")).receipt()
        [got] = await receive(bob, 1)
        assert got.body == b"after rebind"
        assert alice.stats().sessions == 1, "rebind reconnected instead of migrating"
        await alice.shutdown()
        await bob.shutdown()
    run(body())


class CountingRefresher(TokenRefresher):
    def __init__(self, fresh):
        self.fresh, self.calls = fresh, 0

    def refresh_token(self):
        self.calls += 1
        return self.fresh()


def test_token_refresh(server):
    async def body():
        expired = server.token("alice", "phone", ttl="1s")
        time.sleep(2.1)
        refresher = CountingRefresher(lambda: server.token("alice", "phone"))
        alice = await client(server, "alice", token=expired, refresher=refresher)
        assert await alice.wait_connected(WAIT_MS), alice.stats()
        assert refresher.calls == 1
        await alice.shutdown()
    run(body())


class GivesUp(TokenRefresher):
    def refresh_token(self):
        raise TokenRefreshError.Failed("no network")


def test_typed_errors(server):
    async def body():
        with pytest.raises(FerryError.Config):
            await ClientBuilder().build()
        alice = await client(server, "alice")
        with pytest.raises(SendFailure.Invalid) as bad:
            await alice.send_text("not a conversation", "x")
        assert bad.value.outgoing.body == b"x"
        await alice.shutdown()
        with pytest.raises(FerryError.Closed):
            await alice.history(DM, 0, 1)
        forged = await client(server, "alice", token="v1.forged.token", refresher=GivesUp())
        assert isinstance(await first_state(forged), ConnectionState.AUTH_FAILED)
    run(body())
