from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class MoneyDeposited(_message.Message):
    __slots__ = ("amount",)
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    amount: str
    def __init__(self, amount: _Optional[str] = ...) -> None: ...

class Deposited(_message.Message):
    __slots__ = ("cents", "currency")
    CENTS_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    cents: int
    currency: str
    def __init__(self, cents: _Optional[int] = ..., currency: _Optional[str] = ...) -> None: ...

class Deposit(_message.Message):
    __slots__ = ("cents",)
    CENTS_FIELD_NUMBER: _ClassVar[int]
    cents: int
    def __init__(self, cents: _Optional[int] = ...) -> None: ...

class Wallet(_message.Message):
    __slots__ = ("cents", "deposits")
    CENTS_FIELD_NUMBER: _ClassVar[int]
    DEPOSITS_FIELD_NUMBER: _ClassVar[int]
    cents: int
    deposits: int
    def __init__(self, cents: _Optional[int] = ..., deposits: _Optional[int] = ...) -> None: ...
