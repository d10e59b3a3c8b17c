from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class OpenAccount(_message.Message):
    __slots__ = ("initial_balance",)
    INITIAL_BALANCE_FIELD_NUMBER: _ClassVar[int]
    initial_balance: int
    def __init__(self, initial_balance: _Optional[int] = ...) -> None: ...

class Credit(_message.Message):
    __slots__ = ("amount",)
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    amount: int
    def __init__(self, amount: _Optional[int] = ...) -> None: ...

class Debit(_message.Message):
    __slots__ = ("amount",)
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    amount: int
    def __init__(self, amount: _Optional[int] = ...) -> None: ...

class AccountOpened(_message.Message):
    __slots__ = ("account_id", "balance")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    BALANCE_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    balance: int
    def __init__(self, account_id: _Optional[str] = ..., balance: _Optional[int] = ...) -> None: ...

class AccountCredited(_message.Message):
    __slots__ = ("amount",)
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    amount: int
    def __init__(self, amount: _Optional[int] = ...) -> None: ...

class AccountDebited(_message.Message):
    __slots__ = ("amount",)
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    amount: int
    def __init__(self, amount: _Optional[int] = ...) -> None: ...

class Account(_message.Message):
    __slots__ = ("account_id", "balance", "open")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    BALANCE_FIELD_NUMBER: _ClassVar[int]
    OPEN_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    balance: int
    open: bool
    def __init__(self, account_id: _Optional[str] = ..., balance: _Optional[int] = ..., open: _Optional[bool] = ...) -> None: ...
