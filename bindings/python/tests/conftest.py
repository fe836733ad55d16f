"""A real ferry-server process on loopback (embedded store, temporary data directory) per test."""

import os
import pathlib
import queue
import subprocess
import sys
import threading
import time

import pytest

# The generated module (and the library copied next to it by scripts/bindings.sh) live one level up.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

START_TIMEOUT_S = 30


class FerryServer:
    def __init__(self, binary, data_dir):
        self.binary = binary
        self.data_dir = data_dir
        self.address = "127.0.0.1:0"  # fixed by the first start, so restarts keep the port
        self.ca_pem = None
        self.process = None

    def start(self):
        assert self.process is None, "already running"
        log = open(self.data_dir / "server.log", "ab")
        self.process = subprocess.Popen(
            [self.binary, "run", "--data-dir", str(self.data_dir), "--listen", self.address,
             "--http", "127.0.0.1:0"],
            stdout=subprocess.PIPE, stderr=log, text=True)
        log.close()
        # The server prints one stable line once it listens; read it on a thread so the wait is bounded.
        lines = queue.Queue()
        threading.Thread(target=lambda: [lines.put(l) for l in self.process.stdout], daemon=True).start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                line = lines.get(timeout=0.2)
            except queue.Empty:
                continue
            if line.startswith("ferry-server listening "):
                fields = dict(f.split("=", 1) for f in line.split()[2:])
                self.address = fields["quic"]
                self.ca_pem = pathlib.Path(fields["ca"]).read_text()
                return self
        self.process.kill()
        self.process = None
        raise RuntimeError("ferry-server did not report listening within %ss" % START_TIMEOUT_S)

    def stop(self):
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)
        self.process = None

    def token(self, user, device, ttl="24h"):
        out = subprocess.run(
            [self.binary, "token", "--data-dir", str(self.data_dir), "--user", user, "--device", device,
             "--ttl", ttl],
            capture_output=True, text=True, timeout=30, check=True)
        return out.stdout.strip()


@pytest.fixture
def server(tmp_path):
    binary = os.environ.get("FERRY_SERVER")
    assert binary, "set FERRY_SERVER to the ferry-server binary (scripts/bindings.sh --test does)"
    s = FerryServer(binary, tmp_path).start()
    yield s
    s.stop()
