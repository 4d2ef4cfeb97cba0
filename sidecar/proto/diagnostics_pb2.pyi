from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ConditionsRequest(_message.Message):
    __slots__ = ("prefix",)
    PREFIX_FIELD_NUMBER: _ClassVar[int]
    prefix: str
    def __init__(self, prefix: _Optional[str] = ...) -> None: ...

class Condition(_message.Message):
    __slots__ = ("name", "status", "established", "severity", "reason", "message", "labels", "since_unix", "last_result_unix", "number", "text", "gates", "gating", "consecutive_failures", "consecutive_successes")
    class Status(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        STATUS_UNSPECIFIED: _ClassVar[Condition.Status]
        OK: _ClassVar[Condition.Status]
        FAIL: _ClassVar[Condition.Status]
        UNKNOWN: _ClassVar[Condition.Status]
    STATUS_UNSPECIFIED: Condition.Status
    OK: Condition.Status
    FAIL: Condition.Status
    UNKNOWN: Condition.Status
    class Established(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        ESTABLISHED_UNSPECIFIED: _ClassVar[Condition.Established]
        HEALTHY: _ClassVar[Condition.Established]
        UNHEALTHY: _ClassVar[Condition.Established]
    ESTABLISHED_UNSPECIFIED: Condition.Established
    HEALTHY: Condition.Established
    UNHEALTHY: Condition.Established
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    ESTABLISHED_FIELD_NUMBER: _ClassVar[int]
    SEVERITY_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    SINCE_UNIX_FIELD_NUMBER: _ClassVar[int]
    LAST_RESULT_UNIX_FIELD_NUMBER: _ClassVar[int]
    NUMBER_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    GATES_FIELD_NUMBER: _ClassVar[int]
    GATING_FIELD_NUMBER: _ClassVar[int]
    CONSECUTIVE_FAILURES_FIELD_NUMBER: _ClassVar[int]
    CONSECUTIVE_SUCCESSES_FIELD_NUMBER: _ClassVar[int]
    name: str
    status: Condition.Status
    established: Condition.Established
    severity: str
    reason: str
    message: str
    labels: _containers.ScalarMap[str, str]
    since_unix: float
    last_result_unix: float
    number: float
    text: str
    gates: _containers.RepeatedScalarFieldContainer[str]
    gating: bool
    consecutive_failures: int
    consecutive_successes: int
    def __init__(self, name: _Optional[str] = ..., status: _Optional[_Union[Condition.Status, str]] = ..., established: _Optional[_Union[Condition.Established, str]] = ..., severity: _Optional[str] = ..., reason: _Optional[str] = ..., message: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., since_unix: _Optional[float] = ..., last_result_unix: _Optional[float] = ..., number: _Optional[float] = ..., text: _Optional[str] = ..., gates: _Optional[_Iterable[str]] = ..., gating: _Optional[bool] = ..., consecutive_failures: _Optional[int] = ..., consecutive_successes: _Optional[int] = ...) -> None: ...

class ServiceStatus(_message.Message):
    __slots__ = ("name", "serving", "reasons")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SERVING_FIELD_NUMBER: _ClassVar[int]
    REASONS_FIELD_NUMBER: _ClassVar[int]
    name: str
    serving: bool
    reasons: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., serving: _Optional[bool] = ..., reasons: _Optional[_Iterable[str]] = ...) -> None: ...

class ConditionsResponse(_message.Message):
    __slots__ = ("conditions", "services", "version", "started_unix", "simulated")
    CONDITIONS_FIELD_NUMBER: _ClassVar[int]
    SERVICES_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    STARTED_UNIX_FIELD_NUMBER: _ClassVar[int]
    SIMULATED_FIELD_NUMBER: _ClassVar[int]
    conditions: _containers.RepeatedCompositeFieldContainer[Condition]
    services: _containers.RepeatedCompositeFieldContainer[ServiceStatus]
    version: str
    started_unix: float
    simulated: bool
    def __init__(self, conditions: _Optional[_Iterable[_Union[Condition, _Mapping]]] = ..., services: _Optional[_Iterable[_Union[ServiceStatus, _Mapping]]] = ..., version: _Optional[str] = ..., started_unix: _Optional[float] = ..., simulated: _Optional[bool] = ...) -> None: ...
