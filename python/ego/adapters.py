"""Schema evolution: an :class:`EventAdapter` upcasts stored events of old schemas.

Give adapters to the engine; they run when stored events are read back::

    class V1ToV2:
        def adapt(self, type_url: str, payload: bytes, sequence_number: int):
            if type_url.endswith("/wallet.v1.MoneyDeposited"):
                old = MoneyDeposited.FromString(payload)
                return Deposited(cents=old.amount * 100)
            return None  # not mine

    engine = ego.Engine("wallets", store=store, event_adapters=[V1ToV2()])
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from google.protobuf.message import Message

__all__ = ["EventAdapter"]


@runtime_checkable
class EventAdapter(Protocol):
    """Upcasts stored events of old schemas, during recovery and projection consumption.

    Adapters run in order; each gets the stored type URL and bytes (as left by the previous
    one) and the event's sequence number, and returns ``None`` (not mine: unchanged), a new
    ``(type_url, payload)``, or the upcast event message itself. An object without an
    ``adapt`` method is refused by ``ego.Engine`` with :class:`~ego.errors.ConfigurationError`;
    an adapter that raises, or returns anything else, fails the read that needed it.
    """

    def adapt(self, type_url: str, payload: bytes, sequence_number: int) -> Message | tuple[str, bytes] | None: ...
