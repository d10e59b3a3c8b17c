from google.protobuf import any_pb2 as _any_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Event(_message.Message):
    __slots__ = ("persistence_id", "sequence_number", "is_deleted", "event", "timestamp", "shard", "encryption_key_id", "is_encrypted", "position", "metadata", "is_erased", "idempotency_key", "command_hash")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    PERSISTENCE_ID_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_NUMBER_FIELD_NUMBER: _ClassVar[int]
    IS_DELETED_FIELD_NUMBER: _ClassVar[int]
    EVENT_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    SHARD_FIELD_NUMBER: _ClassVar[int]
    ENCRYPTION_KEY_ID_FIELD_NUMBER: _ClassVar[int]
    IS_ENCRYPTED_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    IS_ERASED_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    COMMAND_HASH_FIELD_NUMBER: _ClassVar[int]
    persistence_id: str
    sequence_number: int
    is_deleted: bool
    event: _any_pb2.Any
    timestamp: int
    shard: int
    encryption_key_id: str
    is_encrypted: bool
    position: int
    metadata: _containers.ScalarMap[str, str]
    is_erased: bool
    idempotency_key: str
    command_hash: int
    def __init__(self, persistence_id: _Optional[str] = ..., sequence_number: _Optional[int] = ..., is_deleted: _Optional[bool] = ..., event: _Optional[_Union[_any_pb2.Any, _Mapping]] = ..., timestamp: _Optional[int] = ..., shard: _Optional[int] = ..., encryption_key_id: _Optional[str] = ..., is_encrypted: _Optional[bool] = ..., position: _Optional[int] = ..., metadata: _Optional[_Mapping[str, str]] = ..., is_erased: _Optional[bool] = ..., idempotency_key: _Optional[str] = ..., command_hash: _Optional[int] = ...) -> None: ...

class IdempotencyRecord(_message.Message):
    __slots__ = ("key", "command_hash", "revision")
    KEY_FIELD_NUMBER: _ClassVar[int]
    COMMAND_HASH_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    key: str
    command_hash: int
    revision: int
    def __init__(self, key: _Optional[str] = ..., command_hash: _Optional[int] = ..., revision: _Optional[int] = ...) -> None: ...

class Snapshot(_message.Message):
    __slots__ = ("persistence_id", "sequence_number", "state", "timestamp", "encryption_key_id", "is_encrypted", "idempotency_keys")
    PERSISTENCE_ID_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_NUMBER_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    ENCRYPTION_KEY_ID_FIELD_NUMBER: _ClassVar[int]
    IS_ENCRYPTED_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEYS_FIELD_NUMBER: _ClassVar[int]
    persistence_id: str
    sequence_number: int
    state: _any_pb2.Any
    timestamp: int
    encryption_key_id: str
    is_encrypted: bool
    idempotency_keys: _containers.RepeatedCompositeFieldContainer[IdempotencyRecord]
    def __init__(self, persistence_id: _Optional[str] = ..., sequence_number: _Optional[int] = ..., state: _Optional[_Union[_any_pb2.Any, _Mapping]] = ..., timestamp: _Optional[int] = ..., encryption_key_id: _Optional[str] = ..., is_encrypted: _Optional[bool] = ..., idempotency_keys: _Optional[_Iterable[_Union[IdempotencyRecord, _Mapping]]] = ...) -> None: ...

class DurableState(_message.Message):
    __slots__ = ("persistence_id", "version_number", "resulting_state", "timestamp", "shard", "encryption_key_id", "is_encrypted", "idempotency_keys", "position", "is_erased")
    PERSISTENCE_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_NUMBER_FIELD_NUMBER: _ClassVar[int]
    RESULTING_STATE_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    SHARD_FIELD_NUMBER: _ClassVar[int]
    ENCRYPTION_KEY_ID_FIELD_NUMBER: _ClassVar[int]
    IS_ENCRYPTED_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEYS_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    IS_ERASED_FIELD_NUMBER: _ClassVar[int]
    persistence_id: str
    version_number: int
    resulting_state: _any_pb2.Any
    timestamp: int
    shard: int
    encryption_key_id: str
    is_encrypted: bool
    idempotency_keys: _containers.RepeatedCompositeFieldContainer[IdempotencyRecord]
    position: int
    is_erased: bool
    def __init__(self, persistence_id: _Optional[str] = ..., version_number: _Optional[int] = ..., resulting_state: _Optional[_Union[_any_pb2.Any, _Mapping]] = ..., timestamp: _Optional[int] = ..., shard: _Optional[int] = ..., encryption_key_id: _Optional[str] = ..., is_encrypted: _Optional[bool] = ..., idempotency_keys: _Optional[_Iterable[_Union[IdempotencyRecord, _Mapping]]] = ..., position: _Optional[int] = ..., is_erased: _Optional[bool] = ...) -> None: ...

class DataKey(_message.Message):
    __slots__ = ("persistence_id", "key_id", "master_key_id", "wrapped_key", "created_at")
    PERSISTENCE_ID_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    MASTER_KEY_ID_FIELD_NUMBER: _ClassVar[int]
    WRAPPED_KEY_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    persistence_id: str
    key_id: str
    master_key_id: str
    wrapped_key: bytes
    created_at: int
    def __init__(self, persistence_id: _Optional[str] = ..., key_id: _Optional[str] = ..., master_key_id: _Optional[str] = ..., wrapped_key: _Optional[bytes] = ..., created_at: _Optional[int] = ...) -> None: ...

class Erasure(_message.Message):
    __slots__ = ("persistence_id", "erased_at")
    PERSISTENCE_ID_FIELD_NUMBER: _ClassVar[int]
    ERASED_AT_FIELD_NUMBER: _ClassVar[int]
    persistence_id: str
    erased_at: int
    def __init__(self, persistence_id: _Optional[str] = ..., erased_at: _Optional[int] = ...) -> None: ...

class Offset(_message.Message):
    __slots__ = ("shard_number", "projection_name", "value", "timestamp")
    SHARD_NUMBER_FIELD_NUMBER: _ClassVar[int]
    PROJECTION_NAME_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    shard_number: int
    projection_name: str
    value: int
    timestamp: int
    def __init__(self, shard_number: _Optional[int] = ..., projection_name: _Optional[str] = ..., value: _Optional[int] = ..., timestamp: _Optional[int] = ...) -> None: ...
