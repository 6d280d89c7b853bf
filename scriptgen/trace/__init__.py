"""pcap/pcapng → conversations: the first stage of the data flow.

Public API (stable):

- ``read_conversations(path, ...) -> Iterator[Conversation]``
- ``Conversation``, ``Message``, ``Endpoint``, ``Direction``, ``Outcome``
- ``TraceError``: the file cannot be read as a capture at all.
"""

from scriptgen.trace.types import Conversation, Direction, Endpoint, Message, Outcome

__all__ = ["Conversation", "Direction", "Endpoint", "Message", "Outcome"]
