"""The persisted envelopes (``protos/ego/v1/envelopes.proto``)."""

from ego.v1.envelopes_pb2 import DurableState, Event, Offset, Snapshot

__all__ = ["DurableState", "Event", "Offset", "Snapshot"]
