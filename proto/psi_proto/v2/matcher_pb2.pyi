from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ClientMessage(_message.Message):
    __slots__ = ("open", "items", "returned")
    OPEN_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    RETURNED_FIELD_NUMBER: _ClassVar[int]
    open: Open
    items: Items
    returned: Digests
    def __init__(self, open: _Optional[_Union[Open, _Mapping]] = ..., items: _Optional[_Union[Items, _Mapping]] = ..., returned: _Optional[_Union[Digests, _Mapping]] = ...) -> None: ...

class ServerMessage(_message.Message):
    __slots__ = ("accepted", "table", "result")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    TABLE_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    accepted: Accepted
    table: Points
    result: Result
    def __init__(self, accepted: _Optional[_Union[Accepted, _Mapping]] = ..., table: _Optional[_Union[Points, _Mapping]] = ..., result: _Optional[_Union[Result, _Mapping]] = ...) -> None: ...

class Open(_message.Message):
    __slots__ = ("protocol_version", "id_types", "n_groups", "n_items", "epsilon")
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    ID_TYPES_FIELD_NUMBER: _ClassVar[int]
    N_GROUPS_FIELD_NUMBER: _ClassVar[int]
    N_ITEMS_FIELD_NUMBER: _ClassVar[int]
    EPSILON_FIELD_NUMBER: _ClassVar[int]
    protocol_version: int
    id_types: _containers.RepeatedScalarFieldContainer[str]
    n_groups: int
    n_items: int
    epsilon: float
    def __init__(self, protocol_version: _Optional[int] = ..., id_types: _Optional[_Iterable[str]] = ..., n_groups: _Optional[int] = ..., n_items: _Optional[int] = ..., epsilon: _Optional[float] = ...) -> None: ...

class Accepted(_message.Message):
    __slots__ = ("session_id", "table_size", "max_points_per_message", "max_digests_per_message", "epsilon", "sensitivity", "threshold", "noise", "budget_remaining")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    TABLE_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_POINTS_PER_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    MAX_DIGESTS_PER_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    EPSILON_FIELD_NUMBER: _ClassVar[int]
    SENSITIVITY_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    NOISE_FIELD_NUMBER: _ClassVar[int]
    BUDGET_REMAINING_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    table_size: int
    max_points_per_message: int
    max_digests_per_message: int
    epsilon: float
    sensitivity: int
    threshold: int
    noise: bool
    budget_remaining: float
    def __init__(self, session_id: _Optional[str] = ..., table_size: _Optional[int] = ..., max_points_per_message: _Optional[int] = ..., max_digests_per_message: _Optional[int] = ..., epsilon: _Optional[float] = ..., sensitivity: _Optional[int] = ..., threshold: _Optional[int] = ..., noise: _Optional[bool] = ..., budget_remaining: _Optional[float] = ...) -> None: ...

class Items(_message.Message):
    __slots__ = ("points", "group_sizes")
    POINTS_FIELD_NUMBER: _ClassVar[int]
    GROUP_SIZES_FIELD_NUMBER: _ClassVar[int]
    points: bytes
    group_sizes: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, points: _Optional[bytes] = ..., group_sizes: _Optional[_Iterable[int]] = ...) -> None: ...

class Points(_message.Message):
    __slots__ = ("points",)
    POINTS_FIELD_NUMBER: _ClassVar[int]
    points: bytes
    def __init__(self, points: _Optional[bytes] = ...) -> None: ...

class Digests(_message.Message):
    __slots__ = ("digests",)
    DIGESTS_FIELD_NUMBER: _ClassVar[int]
    digests: bytes
    def __init__(self, digests: _Optional[bytes] = ...) -> None: ...

class Result(_message.Message):
    __slots__ = ("suppressed", "noisy_count", "threshold", "epsilon_spent", "budget_remaining", "noise")
    SUPPRESSED_FIELD_NUMBER: _ClassVar[int]
    NOISY_COUNT_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    EPSILON_SPENT_FIELD_NUMBER: _ClassVar[int]
    BUDGET_REMAINING_FIELD_NUMBER: _ClassVar[int]
    NOISE_FIELD_NUMBER: _ClassVar[int]
    suppressed: bool
    noisy_count: int
    threshold: int
    epsilon_spent: float
    budget_remaining: float
    noise: bool
    def __init__(self, suppressed: _Optional[bool] = ..., noisy_count: _Optional[int] = ..., threshold: _Optional[int] = ..., epsilon_spent: _Optional[float] = ..., budget_remaining: _Optional[float] = ..., noise: _Optional[bool] = ...) -> None: ...

class GetBudgetRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Budget(_message.Message):
    __slots__ = ("advertiser", "epsilon_budget", "epsilon_spent", "epsilon_remaining", "period_days", "epsilon_min", "epsilon_max")
    ADVERTISER_FIELD_NUMBER: _ClassVar[int]
    EPSILON_BUDGET_FIELD_NUMBER: _ClassVar[int]
    EPSILON_SPENT_FIELD_NUMBER: _ClassVar[int]
    EPSILON_REMAINING_FIELD_NUMBER: _ClassVar[int]
    PERIOD_DAYS_FIELD_NUMBER: _ClassVar[int]
    EPSILON_MIN_FIELD_NUMBER: _ClassVar[int]
    EPSILON_MAX_FIELD_NUMBER: _ClassVar[int]
    advertiser: str
    epsilon_budget: float
    epsilon_spent: float
    epsilon_remaining: float
    period_days: float
    epsilon_min: float
    epsilon_max: float
    def __init__(self, advertiser: _Optional[str] = ..., epsilon_budget: _Optional[float] = ..., epsilon_spent: _Optional[float] = ..., epsilon_remaining: _Optional[float] = ..., period_days: _Optional[float] = ..., epsilon_min: _Optional[float] = ..., epsilon_max: _Optional[float] = ...) -> None: ...
