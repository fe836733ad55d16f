// A real `ferry-server` process on loopback (embedded store, temporary data directory) for the JVM
// tests: start, stop, restart on the same port, and mint tokens with `ferry-server token`.
package dev.ferry.ffi.test

import java.io.File
import java.nio.file.Files
import java.util.concurrent.LinkedBlockingQueue
import java.util.concurrent.TimeUnit

class FerryServer(private val binary: String) : AutoCloseable {
    val dataDir: File = Files.createTempDirectory("ferry-kt-").toFile()
    private var process: Process? = null

    /** The QUIC address (`127.0.0.1:port`), fixed by the first start so restarts keep it. */
    var address: String = "127.0.0.1:0"
        private set

    /** The server's self-signed certificate; trusting it pins this server. */
    lateinit var caPem: String
        private set

    fun start(): FerryServer {
        check(process == null) { "already running" }
        val log = File(dataDir, "server.log")
        val p = ProcessBuilder(
            binary, "run", "--data-dir", dataDir.path, "--listen", address, "--http", "127.0.0.1:0",
        ).redirectError(ProcessBuilder.Redirect.appendTo(log)).start()
        process = p
        // The server prints one stable line once it listens; read it on a thread so the wait is bounded.
        val lines = LinkedBlockingQueue<String>()
        Thread { p.inputStream.bufferedReader().forEachLine { lines.put(it) } }.apply { isDaemon = true }.start()
        val deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(30)
        while (System.nanoTime() < deadline) {
            val line = lines.poll(200, TimeUnit.MILLISECONDS) ?: continue
            if (!line.startsWith("ferry-server listening ")) continue
            val fields = line.removePrefix("ferry-server listening ").split(" ")
                .associate { it.substringBefore("=") to it.substringAfter("=") }
            address = fields.getValue("quic")
            caPem = File(fields.getValue("ca")).readText()
            return this
        }
        p.destroyForcibly()
        process = null
        error("ferry-server did not report listening within 30 s; log: ${log.readText().takeLast(2000)}")
    }

    /** SIGTERM, then waits (bounded) for the exit: the store is closed cleanly. */
    fun stop() {
        val p = process ?: return
        p.destroy()
        if (!p.waitFor(20, TimeUnit.SECONDS)) {
            p.destroyForcibly().waitFor(5, TimeUnit.SECONDS)
        }
        process = null
    }

    fun restart() {
        stop()
        start()
    }

    fun token(user: String, device: String, ttl: String = "24h"): String {
        val p = ProcessBuilder(
            binary, "token", "--data-dir", dataDir.path, "--user", user, "--device", device, "--ttl", ttl,
        ).redirectErrorStream(true).start()
        check(p.waitFor(30, TimeUnit.SECONDS)) { "ferry-server token hung" }
        val out = p.inputStream.bufferedReader().readText().trim()
        check(p.exitValue() == 0) { "ferry-server token failed: $out" }
        return out
    }

    override fun close() {
        stop()
        dataDir.deleteRecursively()
    }
}
