"""A TVM RPC tracker with one host server behind it, on loopback: the "device farm" tests talk to."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
from collections.abc import Iterator


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def tracker_summary(port: int) -> str:
    from tvm import rpc

    return str(rpc.connect_tracker("127.0.0.1", port).text_summary())


@contextlib.contextmanager
def loopback_rpc_farm(key: str, wait_s: float = 240.0) -> Iterator[int]:
    """Yield the tracker's port once a server with ``key`` has registered; each process is bounded by
    `timeout` so it ends by itself even if the test run is killed."""
    port = free_port()
    procs = [subprocess.Popen(["timeout", "600", sys.executable, "-m", "tvm.exec.rpc_tracker", "--host", "127.0.0.1",
                               "--port", str(port), "--port-end", str(port + 1)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        # the tracker binds only after its worker process has imported tvm: tens of seconds on a loaded host
        deadline = time.monotonic() + wait_s
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=5).close()
                break
            except OSError:  # not listening yet
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        server_port = free_port()
        procs.append(subprocess.Popen(["timeout", "600", sys.executable, "-m", "tvm.exec.rpc_server",
                                       "--host", "127.0.0.1", "--port", str(server_port),
                                       "--port-end", str(server_port + 1), "--tracker", f"127.0.0.1:{port}",
                                       "--key", key], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        while key not in tracker_summary(port):
            if time.monotonic() > deadline:
                raise TimeoutError("RPC server did not register with the tracker")
            time.sleep(0.3)
        yield port
    finally:
        for proc in reversed(procs):
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
