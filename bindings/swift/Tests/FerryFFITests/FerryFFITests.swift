// XCTest suite of the Swift bindings against a real ferry-server (same scenarios as the Kotlin and Python
// suites). Needs a Swift toolchain (not on the Linux CI machine that runs scripts/test.sh) and
// FERRY_SERVER pointing at the ferry-server binary: `FERRY_SERVER=../../target/debug/ferry-server swift test`.
import Foundation
import XCTest

@testable import FerryFFI

let waitMs: UInt64 = 20_000
let dm = "d:alice:bob"

/// A ferry-server process on loopback with a temporary data directory.
final class FerryServer {
    let binary: String
    let dataDir: URL
    var address = "127.0.0.1:0"
    var caPem = ""
    private var process: Process?

    init() throws {
        guard let binary = ProcessInfo.processInfo.environment["FERRY_SERVER"] else {
            throw XCTSkip("FERRY_SERVER is not set")
        }
        self.binary = binary
        dataDir = FileManager.default.temporaryDirectory.appendingPathComponent("ferry-swift-\(UUID())")
        try FileManager.default.createDirectory(at: dataDir, withIntermediateDirectories: true)
    }

    func start() throws {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: binary)
        p.arguments = ["run", "--data-dir", dataDir.path, "--listen", address, "--http", "127.0.0.1:0"]
        let out = Pipe()
        p.standardOutput = out
        p.standardError = FileHandle.nullDevice
        try p.run()
        process = p
        // The stable "ferry-server listening quic=... http=... ca=..." line; bounded by a 30 s deadline.
        let deadline = Date().addingTimeInterval(30)
        var buffer = ""
        while Date() < deadline {
            let chunk = out.fileHandleForReading.availableData
            buffer += String(decoding: chunk, as: UTF8.self)
            if let line = buffer.split(separator: "\n").first(where: { $0.hasPrefix("ferry-server listening ") }) {
                var fields: [String: String] = [:]
                for f in line.split(separator: " ").dropFirst(2) {
                    let kv = f.split(separator: "=", maxSplits: 1)
                    fields[String(kv[0])] = String(kv[1])
                }
                address = fields["quic"]!
                caPem = try String(contentsOfFile: fields["ca"]!)
                return
            }
        }
        p.terminate()
        throw XCTSkip("ferry-server did not start")
    }

    func stop() {
        process?.terminate()
        process?.waitUntilExit()
        process = nil
    }

    func token(_ user: String, _ device: String, ttl: String = "24h") throws -> String {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: binary)
        p.arguments = ["token", "--data-dir", dataDir.path, "--user", user, "--device", device, "--ttl", ttl]
        let out = Pipe()
        p.standardOutput = out
        try p.run()
        p.waitUntilExit()
        return String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            .trimmingCharacters(in: .whitespacesAndNewlines)
    }

    func client(_ user: String, store: String? = nil, token: String? = nil,
                refresher: TokenRefresher? = nil) async throws -> Client {
        var b = ClientBuilder().endpoint(endpoint: address).caPem(pem: caPem)
            .token(token: try token ?? self.token(user, "phone")).deviceId(deviceId: "phone")
            .backoffMs(initialMs: 50, maxMs: 500)
        if let store { b = b.storePath(path: store) }
        if let refresher { b = b.tokenRefresher(refresher: refresher) }
        return try await b.build()
    }
}

func receive(_ c: Client, _ count: Int) async throws -> [ReceivedMessage] {
    var got: [ReceivedMessage] = []
    let deadline = Date().addingTimeInterval(Double(waitMs) / 1000)
    while got.count < count {
        let left = deadline.timeIntervalSinceNow
        guard left > 0 else { XCTFail("expected \(count) messages, got \(got.count)"); return got }
        if case let .message(message)? = try await c.nextEvent(timeoutMs: UInt64(left * 1000)) {
            got.append(message)
        }
    }
    return got
}

final class CountingRefresher: TokenRefresher, @unchecked Sendable {
    let fresh: () throws -> String
    var calls = 0
    init(_ fresh: @escaping () throws -> String) { self.fresh = fresh }
    func refreshToken() throws -> String {
        calls += 1
        return try fresh()
    }
}

final class FerryFFITests: XCTestCase {
    var server: FerryServer!

    override func setUpWithError() throws {
        server = try FerryServer()
        try server.start()
    }

    override func tearDown() {
        server?.stop()
    }

    func testSendAndReceive() async throws {
        let alice = try await server.client("alice")
        let bob = try await server.client("bob")
        let connected = try await alice.waitConnected(timeoutMs: waitMs)
        XCTAssertTrue(connected)
        let receipt = try await alice.sendText(conversation: dm, text: "hello bob").receipt()
        XCTAssertFalse(receipt.duplicate)
        let got = try await receive(bob, 1)
        XCTAssertEqual(got.first.map { String(decoding: $0.body, as: UTF8.self) }, "hello bob")
        try await alice.shutdown()
        try await bob.shutdown()
    }

    func testExactlyOnceAcrossServerRestart() async throws {
        let store = server.dataDir.appendingPathComponent("alice.sqlite3").path
        let alice = try await server.client("alice", store: store)
        let bob = try await server.client("bob")
        _ = try await alice.waitConnected(timeoutMs: waitMs)
        _ = try await bob.waitConnected(timeoutMs: waitMs)
        server.stop()
        for i in 1...5 { _ = try await alice.sendText(conversation: dm, text: "queued \(i)") }
        try await alice.shutdown()
        try server.start()
        let again = try await server.client("alice", store: store)
        let flushed = try await again.flush(timeoutMs: waitMs)
        XCTAssertTrue(flushed)
        let got = try await receive(bob, 5).map { String(decoding: $0.body, as: UTF8.self) }
        XCTAssertEqual(got, (1...5).map { "queued \($0)" })
        try await again.shutdown()
        try await bob.shutdown()
    }

    func testRebindKeepsTheSession() async throws {
        let alice = try await server.client("alice")
        let bob = try await server.client("bob")
        _ = try await alice.waitConnected(timeoutMs: waitMs)
        try await alice.rebind()
        _ = try await alice.sendText(conversation: dm, text: "after rebind").receipt()
        let got = try await receive(bob, 1)
        XCTAssertEqual(got.count, 1)
        XCTAssertEqual(alice.stats().sessions, 1)
    }

    func testTokenRefresh() async throws {
        let expired = try server.token("alice", "phone", ttl: "1s")
        try await Task.sleep(nanoseconds: 2_100_000_000)
        let server = self.server!
        let refresher = CountingRefresher { try server.token("alice", "phone") }
        let alice = try await server.client("alice", token: expired, refresher: refresher)
        let connected = try await alice.waitConnected(timeoutMs: waitMs)
        XCTAssertTrue(connected)
        XCTAssertEqual(refresher.calls, 1)
    }

    func testTypedErrors() async throws {
        do {
            _ = try await ClientBuilder().build()
            XCTFail("built without an endpoint")
        } catch FerryError.Config(let reason) {
            XCTAssertTrue(reason.contains("endpoint"))
        }
        let alice = try await server.client("alice")
        do {
            _ = try await alice.sendText(conversation: "not a conversation", text: "x")
            XCTFail("sent to a malformed conversation id")
        } catch SendFailure.Invalid(_, let outgoing) {
            XCTAssertEqual(outgoing.body, Data("x".utf8))
        }
        try await alice.shutdown()
    }
}
