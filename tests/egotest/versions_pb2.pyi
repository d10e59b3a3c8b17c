from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class DepositedV1(_message.Message):
    __slots__ = ("cents",)
    CENTS_FIELD_NUMBER: _ClassVar[int]
    cents: str
    def __init__(self, cents: _Optional[str] = ...) -> None: ...

class Deposited(_message.Message):
    __slots__ = ("cents", "currency")
    CENTS_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    cents: int
    currency: str
    def __init__(self, cents: _Optional[int] = ..., currency: _Optional[str] = ...) -> None: ...

class Wallet(_message.Message):
    __slots__ = ("cents", "deposits")
    CENTS_FIELD_NUMBER: _ClassVar[int]
    DEPOSITS_FIELD_NUMBER: _ClassVar[int]
    cents: int
    deposits: int
    def __init__(self, cents: _Optional[int] = ..., deposits: _Optional[int] = ...) -> None: ...
