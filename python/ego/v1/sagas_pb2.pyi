from google.protobuf import any_pb2 as _any_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SagaStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SAGA_STATUS_UNSPECIFIED: _ClassVar[SagaStatus]
    SAGA_STATUS_RUNNING: _ClassVar[SagaStatus]
    SAGA_STATUS_COMPLETED: _ClassVar[SagaStatus]
    SAGA_STATUS_COMPENSATING: _ClassVar[SagaStatus]
    SAGA_STATUS_COMPENSATED: _ClassVar[SagaStatus]
    SAGA_STATUS_FAILED: _ClassVar[SagaStatus]
SAGA_STATUS_UNSPECIFIED: SagaStatus
SAGA_STATUS_RUNNING: SagaStatus
SAGA_STATUS_COMPLETED: SagaStatus
SAGA_STATUS_COMPENSATING: SagaStatus
SAGA_STATUS_COMPENSATED: SagaStatus
SAGA_STATUS_FAILED: SagaStatus

class SagaStep(_message.Message):
    __slots__ = ("step", "entity_id", "command", "timeout", "undo", "compensation", "finish")
    STEP_FIELD_NUMBER: _ClassVar[int]
    ENTITY_ID_FIELD_NUMBER: _ClassVar[int]
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    UNDO_FIELD_NUMBER: _ClassVar[int]
    COMPENSATION_FIELD_NUMBER: _ClassVar[int]
    FINISH_FIELD_NUMBER: _ClassVar[int]
    step: int
    entity_id: str
    command: _any_pb2.Any
    timeout: float
    undo: _any_pb2.Any
    compensation: bool
    finish: int
    def __init__(self, step: _Optional[int] = ..., entity_id: _Optional[str] = ..., command: _Optional[_Union[_any_pb2.Any, _Mapping]] = ..., timeout: _Optional[float] = ..., undo: _Optional[_Union[_any_pb2.Any, _Mapping]] = ..., compensation: _Optional[bool] = ..., finish: _Optional[int] = ...) -> None: ...

class SagaDeadline(_message.Message):
    __slots__ = ("id", "due")
    ID_FIELD_NUMBER: _ClassVar[int]
    DUE_FIELD_NUMBER: _ClassVar[int]
    id: int
    due: int
    def __init__(self, id: _Optional[int] = ..., due: _Optional[int] = ...) -> None: ...

class SagaStart(_message.Message):
    __slots__ = ("saga_type", "initial_state", "timeout")
    SAGA_TYPE_FIELD_NUMBER: _ClassVar[int]
    INITIAL_STATE_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    saga_type: str
    initial_state: _any_pb2.Any
    timeout: float
    def __init__(self, saga_type: _Optional[str] = ..., initial_state: _Optional[_Union[_any_pb2.Any, _Mapping]] = ..., timeout: _Optional[float] = ...) -> None: ...

class SagaObserve(_message.Message):
    __slots__ = ("saga_type", "source_id", "source_sequence", "event", "starts", "initial_state", "timeout")
    SAGA_TYPE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_ID_FIELD_NUMBER: _ClassVar[int]
    SOURCE_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    EVENT_FIELD_NUMBER: _ClassVar[int]
    STARTS_FIELD_NUMBER: _ClassVar[int]
    INITIAL_STATE_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    saga_type: str
    source_id: str
    source_sequence: int
    event: _any_pb2.Any
    starts: bool
    initial_state: _any_pb2.Any
    timeout: float
    def __init__(self, saga_type: _Optional[str] = ..., source_id: _Optional[str] = ..., source_sequence: _Optional[int] = ..., event: _Optional[_Union[_any_pb2.Any, _Mapping]] = ..., starts: _Optional[bool] = ..., initial_state: _Optional[_Union[_any_pb2.Any, _Mapping]] = ..., timeout: _Optional[float] = ...) -> None: ...

class SagaStepOutcome(_message.Message):
    __slots__ = ("step", "ok", "result_state", "error_type", "error")
    STEP_FIELD_NUMBER: _ClassVar[int]
    OK_FIELD_NUMBER: _ClassVar[int]
    RESULT_STATE_FIELD_NUMBER: _ClassVar[int]
    ERROR_TYPE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    step: int
    ok: bool
    result_state: _any_pb2.Any
    error_type: str
    error: str
    def __init__(self, step: _Optional[int] = ..., ok: _Optional[bool] = ..., result_state: _Optional[_Union[_any_pb2.Any, _Mapping]] = ..., error_type: _Optional[str] = ..., error: _Optional[str] = ...) -> None: ...

class SagaFire(_message.Message):
    __slots__ = ("deadline",)
    DEADLINE_FIELD_NUMBER: _ClassVar[int]
    deadline: int
    def __init__(self, deadline: _Optional[int] = ...) -> None: ...

class SagaStarted(_message.Message):
    __slots__ = ("saga_type", "initial_state")
    SAGA_TYPE_FIELD_NUMBER: _ClassVar[int]
    INITIAL_STATE_FIELD_NUMBER: _ClassVar[int]
    saga_type: str
    initial_state: _any_pb2.Any
    def __init__(self, saga_type: _Optional[str] = ..., initial_state: _Optional[_Union[_any_pb2.Any, _Mapping]] = ...) -> None: ...

class SagaDeadlineSet(_message.Message):
    __slots__ = ("deadline",)
    DEADLINE_FIELD_NUMBER: _ClassVar[int]
    deadline: SagaDeadline
    def __init__(self, deadline: _Optional[_Union[SagaDeadline, _Mapping]] = ...) -> None: ...

class SagaDeadlineFired(_message.Message):
    __slots__ = ("deadline",)
    DEADLINE_FIELD_NUMBER: _ClassVar[int]
    deadline: int
    def __init__(self, deadline: _Optional[int] = ...) -> None: ...

class SagaEventObserved(_message.Message):
    __slots__ = ("source_id", "source_sequence", "event", "saga_type")
    SOURCE_ID_FIELD_NUMBER: _ClassVar[int]
    SOURCE_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    EVENT_FIELD_NUMBER: _ClassVar[int]
    SAGA_TYPE_FIELD_NUMBER: _ClassVar[int]
    source_id: str
    source_sequence: int
    event: _any_pb2.Any
    saga_type: str
    def __init__(self, source_id: _Optional[str] = ..., source_sequence: _Optional[int] = ..., event: _Optional[_Union[_any_pb2.Any, _Mapping]] = ..., saga_type: _Optional[str] = ...) -> None: ...

class SagaEventRecorded(_message.Message):
    __slots__ = ("event",)
    EVENT_FIELD_NUMBER: _ClassVar[int]
    event: _any_pb2.Any
    def __init__(self, event: _Optional[_Union[_any_pb2.Any, _Mapping]] = ...) -> None: ...

class SagaStepsPlanned(_message.Message):
    __slots__ = ("steps", "first")
    STEPS_FIELD_NUMBER: _ClassVar[int]
    FIRST_FIELD_NUMBER: _ClassVar[int]
    steps: _containers.RepeatedCompositeFieldContainer[SagaStep]
    first: bool
    def __init__(self, steps: _Optional[_Iterable[_Union[SagaStep, _Mapping]]] = ..., first: _Optional[bool] = ...) -> None: ...

class SagaStepDone(_message.Message):
    __slots__ = ("step", "ok", "error")
    STEP_FIELD_NUMBER: _ClassVar[int]
    OK_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    step: int
    ok: bool
    error: str
    def __init__(self, step: _Optional[int] = ..., ok: _Optional[bool] = ..., error: _Optional[str] = ...) -> None: ...

class SagaStatusChanged(_message.Message):
    __slots__ = ("status", "reason", "keep_first")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    KEEP_FIRST_FIELD_NUMBER: _ClassVar[int]
    status: SagaStatus
    reason: str
    keep_first: bool
    def __init__(self, status: _Optional[_Union[SagaStatus, str]] = ..., reason: _Optional[str] = ..., keep_first: _Optional[bool] = ...) -> None: ...

class SagaEnded(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SagaRecord(_message.Message):
    __slots__ = ("saga_id", "saga_type", "status", "reason", "state", "pending", "done", "next_step", "deadlines", "seen", "buffered", "started", "next_deadline", "timed_out")
    class SeenEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    SAGA_ID_FIELD_NUMBER: _ClassVar[int]
    SAGA_TYPE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    PENDING_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    NEXT_STEP_FIELD_NUMBER: _ClassVar[int]
    DEADLINES_FIELD_NUMBER: _ClassVar[int]
    SEEN_FIELD_NUMBER: _ClassVar[int]
    BUFFERED_FIELD_NUMBER: _ClassVar[int]
    STARTED_FIELD_NUMBER: _ClassVar[int]
    NEXT_DEADLINE_FIELD_NUMBER: _ClassVar[int]
    TIMED_OUT_FIELD_NUMBER: _ClassVar[int]
    saga_id: str
    saga_type: str
    status: SagaStatus
    reason: str
    state: _any_pb2.Any
    pending: _containers.RepeatedCompositeFieldContainer[SagaStep]
    done: _containers.RepeatedCompositeFieldContainer[SagaStep]
    next_step: int
    deadlines: _containers.RepeatedCompositeFieldContainer[SagaDeadline]
    seen: _containers.ScalarMap[str, int]
    buffered: _containers.RepeatedCompositeFieldContainer[SagaEventObserved]
    started: bool
    next_deadline: int
    timed_out: bool
    def __init__(self, saga_id: _Optional[str] = ..., saga_type: _Optional[str] = ..., status: _Optional[_Union[SagaStatus, str]] = ..., reason: _Optional[str] = ..., state: _Optional[_Union[_any_pb2.Any, _Mapping]] = ..., pending: _Optional[_Iterable[_Union[SagaStep, _Mapping]]] = ..., done: _Optional[_Iterable[_Union[SagaStep, _Mapping]]] = ..., next_step: _Optional[int] = ..., deadlines: _Optional[_Iterable[_Union[SagaDeadline, _Mapping]]] = ..., seen: _Optional[_Mapping[str, int]] = ..., buffered: _Optional[_Iterable[_Union[SagaEventObserved, _Mapping]]] = ..., started: _Optional[bool] = ..., next_deadline: _Optional[int] = ..., timed_out: _Optional[bool] = ...) -> None: ...
