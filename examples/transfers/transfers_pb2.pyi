from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class RequestTransfer(_message.Message):
    __slots__ = ("transfer_id", "source", "target", "amount")
    TRANSFER_ID_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    transfer_id: str
    source: str
    target: str
    amount: int
    def __init__(self, transfer_id: _Optional[str] = ..., source: _Optional[str] = ..., target: _Optional[str] = ..., amount: _Optional[int] = ...) -> None: ...

class TransferRequested(_message.Message):
    __slots__ = ("transfer_id", "source", "target", "amount")
    TRANSFER_ID_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    transfer_id: str
    source: str
    target: str
    amount: int
    def __init__(self, transfer_id: _Optional[str] = ..., source: _Optional[str] = ..., target: _Optional[str] = ..., amount: _Optional[int] = ...) -> None: ...

class TransferDesk(_message.Message):
    __slots__ = ("requested",)
    REQUESTED_FIELD_NUMBER: _ClassVar[int]
    requested: bool
    def __init__(self, requested: _Optional[bool] = ...) -> None: ...

class SourceDebited(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class TargetCredited(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Transfer(_message.Message):
    __slots__ = ("transfer_id", "source", "target", "amount", "debited", "credited")
    TRANSFER_ID_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    DEBITED_FIELD_NUMBER: _ClassVar[int]
    CREDITED_FIELD_NUMBER: _ClassVar[int]
    transfer_id: str
    source: str
    target: str
    amount: int
    debited: bool
    credited: bool
    def __init__(self, transfer_id: _Optional[str] = ..., source: _Optional[str] = ..., target: _Optional[str] = ..., amount: _Optional[int] = ..., debited: _Optional[bool] = ..., credited: _Optional[bool] = ...) -> None: ...
