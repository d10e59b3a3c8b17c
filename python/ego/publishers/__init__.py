"""Publishers: named, checkpointed readers of the journal that hand every event (or
durable-state version) to a broker, in order per entity, at least once.

    engine.add_event_publisher(ego.publishers.KafkaPublisher("127.0.0.1:9092"), name="kafka")
    engine.publisher_lag("kafka")

Connectors (each needs its extra: ``pip install 'ego-cqrs[kafka]'``, ``[nats]``, ``[pulsar]``,
``[websocket]``): :class:`KafkaPublisher`, :class:`NatsPublisher`, :class:`PulsarPublisher`,
:class:`WebSocketPublisher` (and :class:`WebSocketServer`, which clients connect to). Anything else: an object with ``publish(records)``
(:class:`EventPublisher`). Payload formats: :class:`ProtobufEnvelope` (default),
:class:`ProtobufJson`, :class:`CloudEventsBinary`, :class:`CloudEventsStructured`.
"""

from ego.publishers.formats import CloudEventsBinary, CloudEventsStructured, PayloadFormat, ProtobufEnvelope, ProtobufJson
from ego.publishers.kafka import KafkaPublisher
from ego.publishers.nats import NatsPublisher
from ego.publishers.protocol import Acknowledgements, EventPublisher, StatePublisher
from ego.publishers.pulsar import PulsarPublisher
from ego.publishers.records import Record
from ego.publishers.websocket import WebSocketPublisher
from ego.publishers.websocket_server import WebSocketServer

__all__ = [
    "Acknowledgements",
    "CloudEventsBinary",
    "CloudEventsStructured",
    "EventPublisher",
    "KafkaPublisher",
    "NatsPublisher",
    "PayloadFormat",
    "ProtobufEnvelope",
    "ProtobufJson",
    "PulsarPublisher",
    "Record",
    "StatePublisher",
    "WebSocketPublisher",
    "WebSocketServer",
]
