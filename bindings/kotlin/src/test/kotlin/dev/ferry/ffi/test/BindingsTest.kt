// JVM tests of the generated Kotlin bindings against a real ferry-server: send and receive, exactly-once
// across a server restart (outbox), rebind, token refresh, typed errors. A plain `main` (Maven Central
// is out of reach here, so no JUnit runner): each test runs under a timeout, failures are counted, and
// the exit code says whether all passed.
package dev.ferry.ffi.test

import dev.ferry.ffi.Client
import dev.ferry.ffi.ClientBuilder
import dev.ferry.ffi.ConnectionState
import dev.ferry.ffi.Event
import dev.ferry.ffi.FerryException
import dev.ferry.ffi.MembershipAction
import dev.ferry.ffi.ReceivedMessage
import dev.ferry.ffi.SendFailure
import dev.ferry.ffi.TokenRefreshException
import dev.ferry.ffi.TokenRefresher
import java.io.File
import java.nio.file.Files
import java.util.concurrent.atomic.AtomicInteger
import kotlin.system.exitProcess
import kotlinx.coroutines.runBlocking
import kotlinx.coroutines.withTimeout

private const val WAIT_MS = 20_000L
private const val DM = "d:alice:bob"

fun check(condition: Boolean, message: () -> String) {
    if (!condition) throw AssertionError(message())
}

/** A client of [server] for [user]/[device] with fast reconnects; [store] null keeps it in memory. */
suspend fun FerryServer.client(
    user: String,
    device: String = "phone",
    store: File? = null,
    token: String = token(user, device),
    refresher: TokenRefresher? = null,
): Client {
    var builder = ClientBuilder().endpoint(address).caPem(caPem).token(token).deviceId(device)
        .deviceClass("phone").backoffMs(50uL, 500uL)
    if (store != null) builder = builder.storePath(store.path)
    if (refresher != null) builder = builder.tokenRefresher(refresher)
    return builder.build()
}

/** Events until [count] messages arrived or the deadline passed (then fails with what it saw). */
suspend fun Client.receive(count: Int, timeoutMs: Long = WAIT_MS): List<ReceivedMessage> {
    val got = mutableListOf<ReceivedMessage>()
    val deadline = System.currentTimeMillis() + timeoutMs
    while (got.size < count) {
        val left = deadline - System.currentTimeMillis()
        check(left > 0) { "expected $count messages, got ${got.map { it.body.decodeToString() }}" }
        val event = nextEvent(left.toULong()) ?: continue
        if (event is Event.Message) got += event.message
    }
    return got
}

/** The first connection state event matching [wanted] within the timeout. */
suspend fun Client.awaitState(wanted: (ConnectionState) -> Boolean): ConnectionState {
    val deadline = System.currentTimeMillis() + WAIT_MS
    while (true) {
        val left = deadline - System.currentTimeMillis()
        check(left > 0) { "connection state not reached within $WAIT_MS ms" }
        val event = nextEvent(left.toULong()) ?: continue
        if (event is Event.Connection && wanted(event.state)) return event.state
    }
}

fun tempStore(name: String): File = File(Files.createTempDirectory("ferry-kt-store-").toFile(), "$name.sqlite3")

suspend fun sendAndReceive(server: FerryServer) {
    val alice = server.client("alice")
    val bob = server.client("bob")
    check(alice.waitConnected(WAIT_MS.toULong()) && bob.waitConnected(WAIT_MS.toULong())) { "not connected" }
    check(alice.userId() == "alice") { "whoami: ${alice.userId()}" }

    val receipt = alice.sendText(DM, "hello bob").receipt()
    check(receipt.seq >= 1uL && !receipt.duplicate) { "receipt $receipt" }
    val got = bob.receive(1).single()
    check(got.body.decodeToString() == "hello bob" && got.sender == "alice" && got.seq == receipt.seq) { "got $got" }
    val history = bob.history(DM, 0uL, 10u)
    check(history.map { it.body.decodeToString() } == listOf("hello bob")) { "history $history" }

    val group = alice.createGroup("team", listOf("bob"))
    val created = bob.receive(1).single()
    check(created.conversation == group && created.membership?.action == MembershipAction.CREATED) {
        "group creation seen as $created"
    }
    alice.typing(group, true) // unreliable by design: only checks that the call crosses the boundary
    check(alice.stats().outbox == 0uL) { "outbox ${alice.stats()}" }
    alice.shutdown()
    bob.shutdown()
}

suspend fun exactlyOnceAcrossRestart(server: FerryServer) {
    val store = tempStore("alice")
    val alice = server.client("alice", store = store)
    val bob = server.client("bob")
    check(alice.waitConnected(WAIT_MS.toULong()) && bob.waitConnected(WAIT_MS.toULong())) { "not connected" }

    server.stop()
    val pending = (1..5).map { alice.sendText(DM, "queued $it") }
    check(alice.stats().outbox == 5uL) { "outbox while down: ${alice.stats()}" }
    // The app dies before the server comes back: the receipts end as Interrupted, the messages stay queued.
    alice.shutdown()
    for (p in pending) {
        try {
            p.receipt()
            throw AssertionError("a receipt resolved with the server down")
        } catch (e: SendFailure.Interrupted) {
            check(e.outgoing.clientMsgId == p.outgoing().clientMsgId) { "handed back ${e.outgoing}" }
        }
    }

    server.start()
    val again = server.client("alice", store = store)
    check(again.flush(WAIT_MS.toULong())) { "outbox not drained: ${again.stats()}" }
    val got = bob.receive(5)
    check(got.map { it.body.decodeToString() } == (1..5).map { "queued $it" }) { "got ${got.map { it.body.decodeToString() }}" }
    // Nothing more arrives: each queued message was stored exactly once.
    again.sendText(DM, "marker").receipt()
    val next = bob.receive(1).single()
    check(next.body.decodeToString() == "marker") { "a duplicate arrived: ${next.body.decodeToString()}" }
    val stored = bob.history(DM, 0uL, 100u).size
    check(stored == 6) { "bob stores $stored messages, not 6" }
    again.shutdown()
    bob.shutdown()
}

suspend fun rebindKeepsTheSession(server: FerryServer) {
    val alice = server.client("alice")
    val bob = server.client("bob")
    check(alice.waitConnected(WAIT_MS.toULong()) && bob.waitConnected(WAIT_MS.toULong())) { "not connected" }
    alice.rebind()
    bob.rebind()
    alice.sendText(DM, "after rebind").receipt()
    check(bob.receive(1).single().body.decodeToString() == "after rebind") { "message after rebind" }
    check(alice.stats().sessions == 1uL && bob.stats().sessions == 1uL) {
        "rebind reconnected instead of migrating: ${alice.stats()} ${bob.stats()}"
    }
    alice.shutdown()
    bob.shutdown()
}

class CountingRefresher(private val fresh: () -> String) : TokenRefresher {
    val calls = AtomicInteger()
    override fun refreshToken(): String {
        calls.incrementAndGet()
        return fresh()
    }
}

suspend fun tokenRefresh(server: FerryServer) {
    val expired = server.token("alice", "phone", ttl = "1s")
    Thread.sleep(2_100)
    val refresher = CountingRefresher { server.token("alice", "phone") }
    val alice = server.client("alice", token = expired, refresher = refresher)
    check(alice.waitConnected(WAIT_MS.toULong())) { "not connected after refresh: ${alice.stats()}" }
    check(refresher.calls.get() == 1) { "refresher called ${refresher.calls.get()} times" }
    alice.sendText(DM, "with a fresh token").receipt()
    alice.shutdown()
}

suspend fun typedErrors(server: FerryServer) {
    try {
        ClientBuilder().build()
        throw AssertionError("built without an endpoint")
    } catch (e: FerryException.Config) {
        check(e.reason.contains("endpoint")) { "reason ${e.reason}" }
    }
    val builder = ClientBuilder().endpoint(server.address).caPem(server.caPem)
        .token(server.token("alice", "phone")).deviceId("phone")
    val alice = builder.build()
    try {
        builder.build()
        throw AssertionError("a builder built twice")
    } catch (_: FerryException.Config) {
    }
    try {
        alice.sendText("not a conversation", "x")
        throw AssertionError("sent to a malformed conversation id")
    } catch (e: SendFailure.Invalid) {
        check(e.outgoing.body.decodeToString() == "x") { "handed back ${e.outgoing}" }
    }
    try {
        alice.addMember("g:" + "0".repeat(32), "bob")
        throw AssertionError("added a member to a group that does not exist")
    } catch (e: FerryException.Server) {
        check(e.codeName.isNotEmpty()) { "server error without a code name" }
    }
    alice.shutdown()
    try {
        alice.history(DM, 0uL, 1u)
        throw AssertionError("history on a stopped client")
    } catch (_: FerryException.Closed) {
    }

    // A refused token without a way to refresh it stops the client with AuthFailed (possibly after a
    // Disconnected); awaitState fails if it is not reported in time.
    val forged = server.client("alice", token = "v1.forged.token")
    forged.awaitState { it is ConnectionState.AuthFailed }
    // A refresher that gives up ends the same way, with its exception typed on the Kotlin side.
    val givesUp = object : TokenRefresher {
        override fun refreshToken(): String = throw TokenRefreshException.Failed("no network")
    }
    val refused = server.client("alice", token = "v1.forged.token", refresher = givesUp)
    check(refused.awaitState { it !is ConnectionState.Connecting } is ConnectionState.AuthFailed) { "refresher gave up" }
}

fun main(args: Array<String>) {
    val binary = args.getOrNull(0) ?: error("usage: BindingsTest <path to ferry-server>")
    val tests = listOf(
        "send and receive" to ::sendAndReceive,
        "exactly once across a server restart" to ::exactlyOnceAcrossRestart,
        "rebind keeps the session" to ::rebindKeepsTheSession,
        "token refresh" to ::tokenRefresh,
        "typed errors" to ::typedErrors,
    )
    var failed = 0
    for ((name, test) in tests) {
        val started = System.currentTimeMillis()
        try {
            FerryServer(binary).start().use { server -> runBlocking { withTimeout(120_000) { test(server) } } }
            println("PASS  $name (${System.currentTimeMillis() - started} ms)")
        } catch (e: Throwable) {
            failed++
            println("FAIL  $name: $e")
            e.printStackTrace()
        }
    }
    println("${tests.size - failed} passed, $failed failed")
    exitProcess(if (failed == 0) 0 else 1)
}
