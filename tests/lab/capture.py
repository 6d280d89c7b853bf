"""tcpdump as a context manager: capture loopback traffic to a pcap file.

Pitfalls handled (see lab-notes): ``--immediate-mode -U`` so packets are not
lost when tcpdump is stopped right after the traffic; we wait for
"listening on" before yielding; stop is SIGINT then wait, so the file is
flushed and closed.
"""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import time
from pathlib import Path
from types import TracebackType

from tests.lab.daemon import LabError


def bpf_for(addr: str, ports: list[int], port_ranges: list[tuple[int, int]] = ()) -> str:
    """A BPF filter for one server address and its ports (empty lists: whole host)."""
    parts = [f"port {p}" for p in ports] + [f"portrange {a}-{b}" for a, b in port_ranges]
    host = f"host {addr}"
    return f"{host} and ({' or '.join(parts)})" if parts else host


class Tcpdump:
    """``with Tcpdump(path, bpf): ...`` captures on ``iface`` while the block runs."""

    def __init__(
        self, path: str | Path, bpf: str, iface: str = "lo", start_timeout: float = 10.0
    ) -> None:
        self.path = Path(path)
        self.bpf = bpf
        self.iface = iface
        self.start_timeout = start_timeout
        self.proc: subprocess.Popen | None = None
        self.stderr_text = ""

    def start(self) -> Tcpdump:
        argv = ["tcpdump", "-i", self.iface, "--immediate-mode", "-U", "-n", "-s", "0"]
        argv += ["-w", str(self.path), self.bpf]
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        self._wait_listening()
        return self

    def _wait_listening(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stderr, selectors.EVENT_READ)
        deadline = time.monotonic() + self.start_timeout
        buf = b""
        try:
            while b"listening on" not in buf:
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    self.stop()
                    raise LabError(f"tcpdump did not start: {buf.decode(errors='replace')}")
                if sel.select(timeout=min(left, 0.2)):
                    chunk = os.read(self.proc.stderr.fileno(), 4096)
                    if not chunk:
                        continue
                    buf += chunk
        finally:
            sel.close()
        self.stderr_text = buf.decode(errors="replace")

    def stop(self) -> None:
        """SIGINT, then wait: tcpdump flushes and prints its packet counts."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            time.sleep(0.2)  # let the last packets of the dialog reach the ring
            self.proc.send_signal(signal.SIGINT)
            try:
                _, err = self.proc.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                _, err = self.proc.communicate()
            self.stderr_text += err.decode(errors="replace")
        self.proc = None

    def __enter__(self) -> Tcpdump:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
