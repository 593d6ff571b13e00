from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DTYPE_UNSPECIFIED: _ClassVar[DType]
    DTYPE_FLOAT32: _ClassVar[DType]
    DTYPE_FLOAT64: _ClassVar[DType]
    DTYPE_FLOAT16: _ClassVar[DType]
    DTYPE_BFLOAT16: _ClassVar[DType]

class PushKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PUSH_KIND_GRADIENT: _ClassVar[PushKind]
    PUSH_KIND_DELTA: _ClassVar[PushKind]

class PushCodec(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PUSH_CODEC_NONE: _ClassVar[PushCodec]
    PUSH_CODEC_INT8: _ClassVar[PushCodec]
    PUSH_CODEC_INT4: _ClassVar[PushCodec]
    PUSH_CODEC_TOPK: _ClassVar[PushCodec]
DTYPE_UNSPECIFIED: DType
DTYPE_FLOAT32: DType
DTYPE_FLOAT64: DType
DTYPE_FLOAT16: DType
DTYPE_BFLOAT16: DType
PUSH_KIND_GRADIENT: PushKind
PUSH_KIND_DELTA: PushKind
PUSH_CODEC_NONE: PushCodec
PUSH_CODEC_INT8: PushCodec
PUSH_CODEC_INT4: PushCodec
PUSH_CODEC_TOPK: PushCodec

class TensorSpec(_message.Message):
    __slots__ = ("name", "shape", "dtype")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    name: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    dtype: DType
    def __init__(self, name: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., dtype: _Optional[_Union[DType, str]] = ...) -> None: ...

class Chunk(_message.Message):
    __slots__ = ("offset", "data")
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    offset: int
    data: bytes
    def __init__(self, offset: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class Capabilities(_message.Message):
    __slots__ = ("push_dtypes", "max_chunk_bytes", "optimizer", "fetch_dtypes", "push_kinds", "aggregation", "push_codecs", "fragments")
    PUSH_DTYPES_FIELD_NUMBER: _ClassVar[int]
    MAX_CHUNK_BYTES_FIELD_NUMBER: _ClassVar[int]
    OPTIMIZER_FIELD_NUMBER: _ClassVar[int]
    FETCH_DTYPES_FIELD_NUMBER: _ClassVar[int]
    PUSH_KINDS_FIELD_NUMBER: _ClassVar[int]
    AGGREGATION_FIELD_NUMBER: _ClassVar[int]
    PUSH_CODECS_FIELD_NUMBER: _ClassVar[int]
    FRAGMENTS_FIELD_NUMBER: _ClassVar[int]
    push_dtypes: _containers.RepeatedScalarFieldContainer[DType]
    max_chunk_bytes: int
    optimizer: str
    fetch_dtypes: _containers.RepeatedScalarFieldContainer[DType]
    push_kinds: _containers.RepeatedScalarFieldContainer[PushKind]
    aggregation: str
    push_codecs: _containers.RepeatedScalarFieldContainer[PushCodec]
    fragments: bool
    def __init__(self, push_dtypes: _Optional[_Iterable[_Union[DType, str]]] = ..., max_chunk_bytes: _Optional[int] = ..., optimizer: _Optional[str] = ..., fetch_dtypes: _Optional[_Iterable[_Union[DType, str]]] = ..., push_kinds: _Optional[_Iterable[_Union[PushKind, str]]] = ..., aggregation: _Optional[str] = ..., push_codecs: _Optional[_Iterable[_Union[PushCodec, str]]] = ..., fragments: _Optional[bool] = ...) -> None: ...

class RegisterRequest(_message.Message):
    __slots__ = ("client_id", "tensors")
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    TENSORS_FIELD_NUMBER: _ClassVar[int]
    client_id: str
    tensors: _containers.RepeatedCompositeFieldContainer[TensorSpec]
    def __init__(self, client_id: _Optional[str] = ..., tensors: _Optional[_Iterable[_Union[TensorSpec, _Mapping]]] = ...) -> None: ...

class RegisterResponse(_message.Message):
    __slots__ = ("initialized", "version", "tensors", "last_sequence", "capabilities", "server_id", "last_step")
    INITIALIZED_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    TENSORS_FIELD_NUMBER: _ClassVar[int]
    LAST_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    SERVER_ID_FIELD_NUMBER: _ClassVar[int]
    LAST_STEP_FIELD_NUMBER: _ClassVar[int]
    initialized: bool
    version: int
    tensors: _containers.RepeatedCompositeFieldContainer[TensorSpec]
    last_sequence: int
    capabilities: Capabilities
    server_id: str
    last_step: int
    def __init__(self, initialized: _Optional[bool] = ..., version: _Optional[int] = ..., tensors: _Optional[_Iterable[_Union[TensorSpec, _Mapping]]] = ..., last_sequence: _Optional[int] = ..., capabilities: _Optional[_Union[Capabilities, _Mapping]] = ..., server_id: _Optional[str] = ..., last_step: _Optional[int] = ...) -> None: ...

class InitializeHeader(_message.Message):
    __slots__ = ("client_id", "tensors")
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    TENSORS_FIELD_NUMBER: _ClassVar[int]
    client_id: str
    tensors: _containers.RepeatedCompositeFieldContainer[TensorSpec]
    def __init__(self, client_id: _Optional[str] = ..., tensors: _Optional[_Iterable[_Union[TensorSpec, _Mapping]]] = ...) -> None: ...

class InitializeRequest(_message.Message):
    __slots__ = ("header", "chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: InitializeHeader
    chunk: Chunk
    def __init__(self, header: _Optional[_Union[InitializeHeader, _Mapping]] = ..., chunk: _Optional[_Union[Chunk, _Mapping]] = ...) -> None: ...

class InitializeResponse(_message.Message):
    __slots__ = ("accepted", "version")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    accepted: bool
    version: int
    def __init__(self, accepted: _Optional[bool] = ..., version: _Optional[int] = ...) -> None: ...

class FetchRequest(_message.Message):
    __slots__ = ("client_id", "read_only", "dtype", "tensors")
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    READ_ONLY_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    TENSORS_FIELD_NUMBER: _ClassVar[int]
    client_id: str
    read_only: bool
    dtype: DType
    tensors: _containers.RepeatedCompositeFieldContainer[TensorSpec]
    def __init__(self, client_id: _Optional[str] = ..., read_only: _Optional[bool] = ..., dtype: _Optional[_Union[DType, str]] = ..., tensors: _Optional[_Iterable[_Union[TensorSpec, _Mapping]]] = ...) -> None: ...

class FetchHeader(_message.Message):
    __slots__ = ("version", "tensors", "total_bytes", "server_id")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    TENSORS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    SERVER_ID_FIELD_NUMBER: _ClassVar[int]
    version: int
    tensors: _containers.RepeatedCompositeFieldContainer[TensorSpec]
    total_bytes: int
    server_id: str
    def __init__(self, version: _Optional[int] = ..., tensors: _Optional[_Iterable[_Union[TensorSpec, _Mapping]]] = ..., total_bytes: _Optional[int] = ..., server_id: _Optional[str] = ...) -> None: ...

class FetchResponse(_message.Message):
    __slots__ = ("header", "chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: FetchHeader
    chunk: Chunk
    def __init__(self, header: _Optional[_Union[FetchHeader, _Mapping]] = ..., chunk: _Optional[_Union[Chunk, _Mapping]] = ...) -> None: ...

class PushHeader(_message.Message):
    __slots__ = ("client_id", "sequence", "base_version", "tensors", "client_step", "base_server_id", "kind", "samples", "codec", "codec_block_size", "codec_count", "fragment")
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    BASE_VERSION_FIELD_NUMBER: _ClassVar[int]
    TENSORS_FIELD_NUMBER: _ClassVar[int]
    CLIENT_STEP_FIELD_NUMBER: _ClassVar[int]
    BASE_SERVER_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    CODEC_FIELD_NUMBER: _ClassVar[int]
    CODEC_BLOCK_SIZE_FIELD_NUMBER: _ClassVar[int]
    CODEC_COUNT_FIELD_NUMBER: _ClassVar[int]
    FRAGMENT_FIELD_NUMBER: _ClassVar[int]
    client_id: str
    sequence: int
    base_version: int
    tensors: _containers.RepeatedCompositeFieldContainer[TensorSpec]
    client_step: int
    base_server_id: str
    kind: PushKind
    samples: int
    codec: PushCodec
    codec_block_size: int
    codec_count: int
    fragment: bool
    def __init__(self, client_id: _Optional[str] = ..., sequence: _Optional[int] = ..., base_version: _Optional[int] = ..., tensors: _Optional[_Iterable[_Union[TensorSpec, _Mapping]]] = ..., client_step: _Optional[int] = ..., base_server_id: _Optional[str] = ..., kind: _Optional[_Union[PushKind, str]] = ..., samples: _Optional[int] = ..., codec: _Optional[_Union[PushCodec, str]] = ..., codec_block_size: _Optional[int] = ..., codec_count: _Optional[int] = ..., fragment: _Optional[bool] = ...) -> None: ...

class PushRequest(_message.Message):
    __slots__ = ("header", "chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: PushHeader
    chunk: Chunk
    def __init__(self, header: _Optional[_Union[PushHeader, _Mapping]] = ..., chunk: _Optional[_Union[Chunk, _Mapping]] = ...) -> None: ...

class PushResponse(_message.Message):
    __slots__ = ("version", "staleness", "duplicate", "local_steps")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    STALENESS_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    LOCAL_STEPS_FIELD_NUMBER: _ClassVar[int]
    version: int
    staleness: int
    duplicate: bool
    local_steps: int
    def __init__(self, version: _Optional[int] = ..., staleness: _Optional[int] = ..., duplicate: _Optional[bool] = ..., local_steps: _Optional[int] = ...) -> None: ...

class LeaveRequest(_message.Message):
    __slots__ = ("client_id",)
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    client_id: str
    def __init__(self, client_id: _Optional[str] = ...) -> None: ...

class LeaveResponse(_message.Message):
    __slots__ = ("version",)
    VERSION_FIELD_NUMBER: _ClassVar[int]
    version: int
    def __init__(self, version: _Optional[int] = ...) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ("client_ids", "max_clients_listed")
    CLIENT_IDS_FIELD_NUMBER: _ClassVar[int]
    MAX_CLIENTS_LISTED_FIELD_NUMBER: _ClassVar[int]
    client_ids: _containers.RepeatedScalarFieldContainer[str]
    max_clients_listed: int
    def __init__(self, client_ids: _Optional[_Iterable[str]] = ..., max_clients_listed: _Optional[int] = ...) -> None: ...

class StalenessSummary(_message.Message):
    __slots__ = ("count", "mean", "max", "histogram")
    COUNT_FIELD_NUMBER: _ClassVar[int]
    MEAN_FIELD_NUMBER: _ClassVar[int]
    MAX_FIELD_NUMBER: _ClassVar[int]
    HISTOGRAM_FIELD_NUMBER: _ClassVar[int]
    count: int
    mean: float
    max: int
    histogram: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, count: _Optional[int] = ..., mean: _Optional[float] = ..., max: _Optional[int] = ..., histogram: _Optional[_Iterable[int]] = ...) -> None: ...

class ClientStatus(_message.Message):
    __slots__ = ("client_id", "active", "pushes", "fetches", "last_sequence", "last_step", "last_seen_unix", "staleness", "expired")
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_FIELD_NUMBER: _ClassVar[int]
    PUSHES_FIELD_NUMBER: _ClassVar[int]
    FETCHES_FIELD_NUMBER: _ClassVar[int]
    LAST_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    LAST_STEP_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_UNIX_FIELD_NUMBER: _ClassVar[int]
    STALENESS_FIELD_NUMBER: _ClassVar[int]
    EXPIRED_FIELD_NUMBER: _ClassVar[int]
    client_id: str
    active: bool
    pushes: int
    fetches: int
    last_sequence: int
    last_step: int
    last_seen_unix: float
    staleness: StalenessSummary
    expired: bool
    def __init__(self, client_id: _Optional[str] = ..., active: _Optional[bool] = ..., pushes: _Optional[int] = ..., fetches: _Optional[int] = ..., last_sequence: _Optional[int] = ..., last_step: _Optional[int] = ..., last_seen_unix: _Optional[float] = ..., staleness: _Optional[_Union[StalenessSummary, _Mapping]] = ..., expired: _Optional[bool] = ...) -> None: ...

class StatusResponse(_message.Message):
    __slots__ = ("initialized", "version", "updates_applied", "pushes_rejected", "duplicate_pushes", "num_parameters", "optimizer", "server_id", "uptime_secs", "staleness", "clients", "num_clients", "active_clients", "expired_clients", "clients_not_listed", "max_clients", "clients_refused", "malformed_requests")
    INITIALIZED_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    UPDATES_APPLIED_FIELD_NUMBER: _ClassVar[int]
    PUSHES_REJECTED_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_PUSHES_FIELD_NUMBER: _ClassVar[int]
    NUM_PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    OPTIMIZER_FIELD_NUMBER: _ClassVar[int]
    SERVER_ID_FIELD_NUMBER: _ClassVar[int]
    UPTIME_SECS_FIELD_NUMBER: _ClassVar[int]
    STALENESS_FIELD_NUMBER: _ClassVar[int]
    CLIENTS_FIELD_NUMBER: _ClassVar[int]
    NUM_CLIENTS_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_CLIENTS_FIELD_NUMBER: _ClassVar[int]
    EXPIRED_CLIENTS_FIELD_NUMBER: _ClassVar[int]
    CLIENTS_NOT_LISTED_FIELD_NUMBER: _ClassVar[int]
    MAX_CLIENTS_FIELD_NUMBER: _ClassVar[int]
    CLIENTS_REFUSED_FIELD_NUMBER: _ClassVar[int]
    MALFORMED_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    initialized: bool
    version: int
    updates_applied: int
    pushes_rejected: int
    duplicate_pushes: int
    num_parameters: int
    optimizer: str
    server_id: str
    uptime_secs: float
    staleness: StalenessSummary
    clients: _containers.RepeatedCompositeFieldContainer[ClientStatus]
    num_clients: int
    active_clients: int
    expired_clients: int
    clients_not_listed: int
    max_clients: int
    clients_refused: int
    malformed_requests: int
    def __init__(self, initialized: _Optional[bool] = ..., version: _Optional[int] = ..., updates_applied: _Optional[int] = ..., pushes_rejected: _Optional[int] = ..., duplicate_pushes: _Optional[int] = ..., num_parameters: _Optional[int] = ..., optimizer: _Optional[str] = ..., server_id: _Optional[str] = ..., uptime_secs: _Optional[float] = ..., staleness: _Optional[_Union[StalenessSummary, _Mapping]] = ..., clients: _Optional[_Iterable[_Union[ClientStatus, _Mapping]]] = ..., num_clients: _Optional[int] = ..., active_clients: _Optional[int] = ..., expired_clients: _Optional[int] = ..., clients_not_listed: _Optional[int] = ..., max_clients: _Optional[int] = ..., clients_refused: _Optional[int] = ..., malformed_requests: _Optional[int] = ...) -> None: ...

class HeartbeatRequest(_message.Message):
    __slots__ = ("client_id",)
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    client_id: str
    def __init__(self, client_id: _Optional[str] = ...) -> None: ...

class HeartbeatResponse(_message.Message):
    __slots__ = ("version", "server_id")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SERVER_ID_FIELD_NUMBER: _ClassVar[int]
    version: int
    server_id: str
    def __init__(self, version: _Optional[int] = ..., server_id: _Optional[str] = ...) -> None: ...
