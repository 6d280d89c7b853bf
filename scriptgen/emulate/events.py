"""The catalogue of every event id the emulator writes to its JSON-lines log.

One place lists them so analysts can rely on the names, a test can check that
the code emits exactly these, and the README table is generated, not typed.
Every event also carries the contract fields ``eventid``, ``timestamp``,
``src_ip``, ``src_port``, ``dst_ip``, ``dst_port``, ``protocol`` and
``session`` (null when the event is not about a client).

Run ``python -m scriptgen.emulate.events`` to print the markdown table.
"""

from __future__ import annotations

CATALOGUE: dict[str, str] = {
    "scriptgen.service.started": "The emulator started; lists the served ports and the config file.",
    "scriptgen.service.stopped": "The emulator is shutting down.",
    "scriptgen.port.listening": "A served (protocol, port) is bound; gives the real port (useful with port 0).",
    "scriptgen.port.error": "A served port could not be bound (in use, no permission); the others still serve.",
    "scriptgen.model.loaded": "Models were (re)loaded and swapped in: machine, file, state and transition counts.",
    "scriptgen.model.error": "A model file could not be loaded (file and problem named); the previous model keeps serving.",
    "scriptgen.session.connect": "A TCP connection was accepted, or a UDP source sent its first datagram.",
    "scriptgen.session.closed": (
        "A session ended: reason, duration, bytes in and out, requests matched. Reasons: "
        "client_closed, connection_lost, server_close, server_reset, unmatched "
        "(on_unmatched = close), idle_timeout, session_timeout, max_buffer_bytes, evicted "
        "(made room at max_connections, or a UDP source at max_sources), send_error (UDP), "
        "service_stopped (UDP); relayed ones: host_closed, relay_ended, proxy_* (docs/proxy.md)."
    ),
    "scriptgen.request.matched": "A client request matched a transition: from state, transition index, target state, request hex, the answer sent (hex) and what the server does next (open, close, reset).",
    "scriptgen.request.unmatched": "No transition matched a request (reason, state, request hex, bounded); it is kept for the proxy.",
    "scriptgen.answer.sent": "At connect, the initial state's answer (a banner, hex) was sent, or the server closes at once; answers to requests are in scriptgen.request.matched.",
    "scriptgen.gate.ready": "Ports that wait for a signal are gated: mechanism (nftables or fallback), why, which ports.",
    "scriptgen.gate.opened": "A state's signal opened a gated port for this source: port, emitting state, seconds, refreshed.",
    "scriptgen.gate.expired": "A signal ran out: the gated port is closed again for this source.",
    "scriptgen.gate.refused": "A connection to a gated port from a source not signalled was accepted and reset at once (fallback).",
    "scriptgen.gate.error": "Gating went wrong: nft failed or was slow, or the gate table is full; what happened.",
    "scriptgen.proxy.allocated": "An unmatched request (or a port with no model yet) handed this source to a pool host: host, the request (hex), the source's open connections, the recording file; `doubt` when the request matched a transition too uncertain to trust (its samples, answer shapes, states).",
    "scriptgen.proxy.replayed": "A connection's emulated turns were replayed to the host and its answers looked like the emulated ones: turns, similarity per turn.",
    "scriptgen.proxy.relaying": "Both directions of this connection are now relayed between the client and the host (and recorded).",
    "scriptgen.proxy.failed": "Proxying this connection failed (reason: pool_exhausted -- with `hosts_down` when hosts are down --, over_limit, buffer_overflow, host_refused, host_timeout, replay_timeout, answers_differ, host_closed, client_left); `fallback: emulated` when the host did not take a doubted request and the emulator answered it; see docs/proxy.md for what happens then.",
    "scriptgen.proxy.host_down": "A pool host refused or did not accept in connect_timeout on `port`: it is skipped by allocation for that port for `seconds` (host_backoff, doubled per failure in a row up to host_backoff_max); `failures` in a row, `reason`.",
    "scriptgen.proxy.host_up": "A pool host that had been down on `port` accepted a connection there again: its back-off for that port is reset.",
    "scriptgen.proxy.host_closed": "The pool host closed a relayed connection; the client's connection is closed too.",
    "scriptgen.proxy.released": "A source was quiet for the expiry (or the service stopped): its host returned to the pool, its recording is pending learning.",
    "scriptgen.proxy.learned": "Recordings were learned (update + refinement) and the models saved: files, number of new transitions, per-port counts.",
    "scriptgen.proxy.signature": "A transition learned online (new activity): port, state, pattern (described) and its regular expression, usable as a detection signature.",
    "scriptgen.proxy.learn_failed": "A recording could not be learned (file and problem); it is moved to the spool's failed/ directory.",
    "scriptgen.limit.hit": "A configured bound was reached (which limit, its value); rate-limited, with a suppressed count.",
    "scriptgen.log.dropped": "Events were dropped (queue full or log unwritable); how many, written once logging works again.",
}


def markdown_table() -> str:
    """The catalogue as a markdown table for the README."""
    lines = ["| Event id | Meaning |", "| --- | --- |"]
    lines += [f"| `{eid}` | {meaning} |" for eid, meaning in CATALOGUE.items()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(markdown_table(), end="")
