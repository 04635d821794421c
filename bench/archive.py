"""A minimal C-STORE SCP for the latency benchmark: appends each arrival time to a file.

Usage: python bench/archive.py PORT TIMES_FILE
"""

from __future__ import annotations

import contextlib
import signal
import socket
import sys
import threading
import time

from pynetdicom import AE, _config, evt


def set_tcp_nodelay(event: evt.Event) -> None:
    """Nagle's algorithm adds ~40 ms to each small C-STORE response: turn it off."""
    sock = getattr(getattr(event.assoc.dul, "socket", None), "socket", None)
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def main() -> None:
    port, times_path = int(sys.argv[1]), sys.argv[2]
    _config.UNRESTRICTED_STORAGE_SERVICE = True
    times = open(times_path, "a", buffering=1)  # noqa: SIM115 - open for the process's life
    lock = threading.Lock()

    def on_store(event: evt.Event) -> int:
        arrived = time.time()
        with lock:
            times.write(f"{arrived:.6f}\n")
        return 0x0000

    ae = AE(ae_title="ARCHIVE")
    ae.maximum_pdu_size = 0
    ae.add_supported_context("1.2.840.10008.1.1")
    server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[
        (evt.EVT_C_STORE, on_store), (evt.EVT_CONN_OPEN, set_tcp_nodelay)])
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()
    server.shutdown()


if __name__ == "__main__":
    main()
