from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class AddStock(_message.Message):
    __slots__ = ("quantity",)
    QUANTITY_FIELD_NUMBER: _ClassVar[int]
    quantity: int
    def __init__(self, quantity: _Optional[int] = ...) -> None: ...

class Reserve(_message.Message):
    __slots__ = ("quantity", "order_id")
    QUANTITY_FIELD_NUMBER: _ClassVar[int]
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    quantity: int
    order_id: str
    def __init__(self, quantity: _Optional[int] = ..., order_id: _Optional[str] = ...) -> None: ...

class StockAdded(_message.Message):
    __slots__ = ("quantity",)
    QUANTITY_FIELD_NUMBER: _ClassVar[int]
    quantity: int
    def __init__(self, quantity: _Optional[int] = ...) -> None: ...

class StockReserved(_message.Message):
    __slots__ = ("quantity", "order_id", "left")
    QUANTITY_FIELD_NUMBER: _ClassVar[int]
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    LEFT_FIELD_NUMBER: _ClassVar[int]
    quantity: int
    order_id: str
    left: int
    def __init__(self, quantity: _Optional[int] = ..., order_id: _Optional[str] = ..., left: _Optional[int] = ...) -> None: ...

class Product(_message.Message):
    __slots__ = ("sku", "on_hand")
    SKU_FIELD_NUMBER: _ClassVar[int]
    ON_HAND_FIELD_NUMBER: _ClassVar[int]
    sku: str
    on_hand: int
    def __init__(self, sku: _Optional[str] = ..., on_hand: _Optional[int] = ...) -> None: ...
