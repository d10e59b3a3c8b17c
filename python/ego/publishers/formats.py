"""Payload formats: how a journal entry becomes a record's bytes and headers.

- :class:`ProtobufEnvelope` (default): the stored envelope (``ego.v1.Event`` or
  ``ego.v1.DurableState``) as protobuf bytes.
- :class:`ProtobufJson`: the same envelope in protobuf's JSON mapping.
- :class:`CloudEventsBinary`: the user's message bytes as the data, the CloudEvents
  attributes as ``ce_*`` headers (Kafka and Pulsar; NATS writes them ``ce-*``, as its binding
  says).
- :class:`CloudEventsStructured`: one JSON CloudEvent per record.

Every format adds the header ``ego-event-id`` (``persistence_id:sequence_number``).
Encrypted entries are published as stored (ciphertext; ``ego-encryption-key-id`` names the key).

Example::

    ego.publishers.KafkaPublisher("127.0.0.1:9092", format=ego.publishers.CloudEventsStructured(source="bank"))
"""

from __future__ import annotations

import base64
import datetime
import json
from typing import Any, Protocol, runtime_checkable

from google.protobuf import json_format

from ego._ego import PersistedEvent
from ego.errors import ConfigurationError
from ego.publishers.records import Source

__all__ = ["CloudEventsBinary", "CloudEventsStructured", "PayloadFormat", "ProtobufEnvelope", "ProtobufJson"]

EVENT_ID_HEADER = "ego-event-id"


@runtime_checkable
class PayloadFormat(Protocol):
    """Renders one journal entry: ``render(source) -> (value, headers)``."""

    def render(self, source: Source) -> tuple[bytes, dict[str, str]]: ...


def _message_name(type_url: str) -> str:
    return type_url.rsplit("/", 1)[-1]


def _envelope_name(source: Source) -> str:
    return "ego.v1.Event" if isinstance(source, PersistedEvent) else "ego.v1.DurableState"


def _base_headers(source: Source, content_type: str) -> dict[str, str]:
    headers = {"content-type": content_type, EVENT_ID_HEADER: source.event_id}
    if source.is_encrypted:
        headers["ego-encryption-key-id"] = source.encryption_key_id
    return headers


def _rfc3339(nanos: int) -> str:
    seconds, rest = divmod(nanos, 1_000_000_000)
    stamp = datetime.datetime.fromtimestamp(seconds, tz=datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{stamp}.{rest:09d}Z"


def _sequence(source: Source) -> int:
    return source.sequence_number if isinstance(source, PersistedEvent) else source.version


class ProtobufEnvelope:
    """The stored envelope as protobuf bytes (the default; what the Go library sends).

    ``content-type: application/x-protobuf; messageType=ego.v1.Event`` (or
    ``ego.v1.DurableState``). Decode with ``ego.v1.Event.FromString(value)``."""

    _EVENT = "application/x-protobuf; messageType=ego.v1.Event"
    _STATE = "application/x-protobuf; messageType=ego.v1.DurableState"

    def render(self, source: Source) -> tuple[bytes, dict[str, str]]:
        # One call per published record: written out rather than through _base_headers.
        headers = {
            "content-type": self._EVENT if type(source) is PersistedEvent else self._STATE,
            EVENT_ID_HEADER: source.event_id,
        }
        if source.is_encrypted:
            headers["ego-encryption-key-id"] = source.encryption_key_id
        return source.envelope_bytes(), headers


class ProtobufJson:
    """The stored envelope in protobuf's JSON mapping (``content-type: application/json``).
    The user's message appears as a JSON ``Any`` (``{"@type": ..., field: value}``), so its
    module must be imported; an encrypted payload or an unknown type is sent as
    ``{"@type": type_url, "value": base64}``."""

    def render(self, source: Source) -> tuple[bytes, dict[str, str]]:
        body = envelope_json(source.envelope())
        return json.dumps(body, separators=(",", ":")).encode(), _base_headers(source, "application/json")


def envelope_json(envelope: Any) -> dict[str, Any]:
    """An ``ego.v1.Event`` or ``ego.v1.DurableState`` in protobuf's JSON mapping; a payload
    that cannot be rendered (encrypted, or of a type not imported) becomes
    ``{"@type": type_url, "value": base64}``. `envelope` is not changed."""
    try:
        return json_format.MessageToDict(envelope)
    except (TypeError, KeyError, json_format.Error):
        is_event = envelope.DESCRIPTOR.full_name == "ego.v1.Event"
        field = "event" if is_event else "resulting_state"
        any_msg = getattr(envelope, field)
        copy = type(envelope)()
        copy.CopyFrom(envelope)
        copy.ClearField(field)
        body = json_format.MessageToDict(copy)
        body["event" if is_event else "resultingState"] = {
            "@type": any_msg.type_url,
            "value": base64.b64encode(any_msg.value).decode(),
        }
        return body


class _CloudEvents:
    def __init__(self, source: str) -> None:
        if not isinstance(source, str) or not source:
            raise ConfigurationError(f"a CloudEvents format needs a non-empty source (a URI-reference), got {source!r}")
        self.source = source

    def attributes(self, item: Source) -> dict[str, str]:
        attrs = {
            "specversion": "1.0",
            "id": item.event_id,
            "source": self.source,
            "type": _message_name(item.type_url),
            "subject": item.persistence_id,
            "time": _rfc3339(item.timestamp),
            "sequence": str(_sequence(item)),
            "partitionkey": item.persistence_id,
        }
        if item.is_encrypted:
            attrs["egoencryptionkeyid"] = item.encryption_key_id
        return attrs


class CloudEventsBinary(_CloudEvents):
    """CloudEvents 1.0, binary content mode: the value is the user's message bytes as stored
    (``content-type: application/protobuf``), the attributes are headers ``ce_specversion``,
    ``ce_id`` (the event id), ``ce_source``, ``ce_type`` (the message's full name),
    ``ce_subject`` (the persistence id), ``ce_time``, ``ce_sequence`` (the sequence number or
    version) and ``ce_partitionkey``.

    Example::

        ego.publishers.KafkaPublisher(servers, format=ego.publishers.CloudEventsBinary(source="//bank"))
    """

    def render(self, source: Source) -> tuple[bytes, dict[str, str]]:
        headers = {f"ce_{k}": v for k, v in self.attributes(source).items()}
        headers["content-type"] = "application/protobuf"
        headers[EVENT_ID_HEADER] = source.event_id
        return source.payload, headers


class CloudEventsStructured(_CloudEvents):
    """CloudEvents 1.0, structured content mode: one JSON object per record
    (``content-type: application/cloudevents+json``). ``data`` is the user's message in
    protobuf's JSON mapping (``datacontenttype: application/json``); with ``data="protobuf"``,
    or when the payload is encrypted, ``data_base64`` holds the stored bytes
    (``datacontenttype: application/protobuf``)."""

    def __init__(self, source: str, *, data: str = "json") -> None:
        super().__init__(source)
        if data not in ("json", "protobuf"):
            raise ConfigurationError(f'data must be "json" or "protobuf", got {data!r}')
        self.data = data

    def render(self, source: Source) -> tuple[bytes, dict[str, str]]:
        event: dict[str, Any] = dict(self.attributes(source))
        message = None
        if self.data == "json" and not source.is_encrypted:
            message = source.event if isinstance(source, PersistedEvent) else source.state
        if message is not None:
            event["datacontenttype"] = "application/json"
            event["data"] = json_format.MessageToDict(message)
        else:
            event["datacontenttype"] = "application/protobuf"
            event["data_base64"] = base64.b64encode(source.payload).decode()
        headers = {"content-type": "application/cloudevents+json", EVENT_ID_HEADER: source.event_id}
        return json.dumps(event, separators=(",", ":")).encode(), headers
