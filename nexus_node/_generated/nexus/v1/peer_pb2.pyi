from nexus_node._generated.nexus.v1 import nexus_pb2 as _nexus_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SnapshotChunk(_message.Message):
    __slots__ = ("cluster", "from_node", "message", "size", "sha256", "offset", "data", "chunk_sha256")
    CLUSTER_FIELD_NUMBER: _ClassVar[int]
    FROM_NODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    CHUNK_SHA256_FIELD_NUMBER: _ClassVar[int]
    cluster: str
    from_node: str
    message: bytes
    size: int
    sha256: str
    offset: int
    data: bytes
    chunk_sha256: str
    def __init__(self, cluster: _Optional[str] = ..., from_node: _Optional[str] = ..., message: _Optional[bytes] = ..., size: _Optional[int] = ..., sha256: _Optional[str] = ..., offset: _Optional[int] = ..., data: _Optional[bytes] = ..., chunk_sha256: _Optional[str] = ...) -> None: ...

class SnapshotProgress(_message.Message):
    __slots__ = ("have", "done")
    HAVE_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    have: int
    done: bool
    def __init__(self, have: _Optional[int] = ..., done: _Optional[bool] = ...) -> None: ...

class WorkUp(_message.Message):
    __slots__ = ("cluster", "node_id", "heartbeat", "result")
    CLUSTER_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    cluster: str
    node_id: str
    heartbeat: Heartbeat
    result: TaskResult
    def __init__(self, cluster: _Optional[str] = ..., node_id: _Optional[str] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ..., result: _Optional[_Union[TaskResult, _Mapping]] = ...) -> None: ...

class Heartbeat(_message.Message):
    __slots__ = ("term", "slots", "task_memory_bytes", "memory_free_bytes", "memory_total_bytes", "cores", "accelerator", "running", "trials")
    TERM_FIELD_NUMBER: _ClassVar[int]
    SLOTS_FIELD_NUMBER: _ClassVar[int]
    TASK_MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    MEMORY_FREE_BYTES_FIELD_NUMBER: _ClassVar[int]
    MEMORY_TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    CORES_FIELD_NUMBER: _ClassVar[int]
    ACCELERATOR_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    TRIALS_FIELD_NUMBER: _ClassVar[int]
    term: int
    slots: int
    task_memory_bytes: int
    memory_free_bytes: int
    memory_total_bytes: int
    cores: int
    accelerator: str
    running: _containers.RepeatedScalarFieldContainer[str]
    trials: _containers.RepeatedCompositeFieldContainer[RunningTrial]
    def __init__(self, term: _Optional[int] = ..., slots: _Optional[int] = ..., task_memory_bytes: _Optional[int] = ..., memory_free_bytes: _Optional[int] = ..., memory_total_bytes: _Optional[int] = ..., cores: _Optional[int] = ..., accelerator: _Optional[str] = ..., running: _Optional[_Iterable[str]] = ..., trials: _Optional[_Iterable[_Union[RunningTrial, _Mapping]]] = ...) -> None: ...

class RunningTrial(_message.Message):
    __slots__ = ("lease_id", "study_name", "trial_number")
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    STUDY_NAME_FIELD_NUMBER: _ClassVar[int]
    TRIAL_NUMBER_FIELD_NUMBER: _ClassVar[int]
    lease_id: str
    study_name: str
    trial_number: int
    def __init__(self, lease_id: _Optional[str] = ..., study_name: _Optional[str] = ..., trial_number: _Optional[int] = ...) -> None: ...

class TaskResult(_message.Message):
    __slots__ = ("lease_id", "ok", "error_kind", "error_message", "result_json")
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    OK_FIELD_NUMBER: _ClassVar[int]
    ERROR_KIND_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    RESULT_JSON_FIELD_NUMBER: _ClassVar[int]
    lease_id: str
    ok: bool
    error_kind: str
    error_message: str
    result_json: bytes
    def __init__(self, lease_id: _Optional[str] = ..., ok: _Optional[bool] = ..., error_kind: _Optional[str] = ..., error_message: _Optional[str] = ..., result_json: _Optional[bytes] = ...) -> None: ...

class WorkDown(_message.Message):
    __slots__ = ("assign", "cancel")
    ASSIGN_FIELD_NUMBER: _ClassVar[int]
    CANCEL_FIELD_NUMBER: _ClassVar[int]
    assign: Assignment
    cancel: CancelTask
    def __init__(self, assign: _Optional[_Union[Assignment, _Mapping]] = ..., cancel: _Optional[_Union[CancelTask, _Mapping]] = ...) -> None: ...

class Assignment(_message.Message):
    __slots__ = ("lease_id", "term", "task_json", "log_index")
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    TERM_FIELD_NUMBER: _ClassVar[int]
    TASK_JSON_FIELD_NUMBER: _ClassVar[int]
    LOG_INDEX_FIELD_NUMBER: _ClassVar[int]
    lease_id: str
    term: int
    task_json: bytes
    log_index: int
    def __init__(self, lease_id: _Optional[str] = ..., term: _Optional[int] = ..., task_json: _Optional[bytes] = ..., log_index: _Optional[int] = ...) -> None: ...

class CancelTask(_message.Message):
    __slots__ = ("lease_id", "reason")
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    lease_id: str
    reason: str
    def __init__(self, lease_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class JoinRequest(_message.Message):
    __slots__ = ("cluster", "node_id", "address")
    CLUSTER_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    cluster: str
    node_id: str
    address: str
    def __init__(self, cluster: _Optional[str] = ..., node_id: _Optional[str] = ..., address: _Optional[str] = ...) -> None: ...

class FetchBlobRequest(_message.Message):
    __slots__ = ("cluster", "sha256", "offset")
    CLUSTER_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    cluster: str
    sha256: str
    offset: int
    def __init__(self, cluster: _Optional[str] = ..., sha256: _Optional[str] = ..., offset: _Optional[int] = ...) -> None: ...

class BlobChunk(_message.Message):
    __slots__ = ("data",)
    DATA_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    def __init__(self, data: _Optional[bytes] = ...) -> None: ...

class DescribeRequest(_message.Message):
    __slots__ = ("cluster",)
    CLUSTER_FIELD_NUMBER: _ClassVar[int]
    cluster: str
    def __init__(self, cluster: _Optional[str] = ...) -> None: ...

class PeerAddress(_message.Message):
    __slots__ = ("node_id", "address")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    address: str
    def __init__(self, node_id: _Optional[str] = ..., address: _Optional[str] = ...) -> None: ...

class HelloRequest(_message.Message):
    __slots__ = ("node_id", "cluster", "address", "protocol_version", "members")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    cluster: str
    address: str
    protocol_version: int
    members: _containers.RepeatedCompositeFieldContainer[PeerAddress]
    def __init__(self, node_id: _Optional[str] = ..., cluster: _Optional[str] = ..., address: _Optional[str] = ..., protocol_version: _Optional[int] = ..., members: _Optional[_Iterable[_Union[PeerAddress, _Mapping]]] = ...) -> None: ...

class HelloReply(_message.Message):
    __slots__ = ("node_id", "cluster", "address", "protocol_version", "member", "leader_id", "leader_address", "members")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    MEMBER_FIELD_NUMBER: _ClassVar[int]
    LEADER_ID_FIELD_NUMBER: _ClassVar[int]
    LEADER_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    cluster: str
    address: str
    protocol_version: int
    member: bool
    leader_id: str
    leader_address: str
    members: _containers.RepeatedCompositeFieldContainer[PeerAddress]
    def __init__(self, node_id: _Optional[str] = ..., cluster: _Optional[str] = ..., address: _Optional[str] = ..., protocol_version: _Optional[int] = ..., member: _Optional[bool] = ..., leader_id: _Optional[str] = ..., leader_address: _Optional[str] = ..., members: _Optional[_Iterable[_Union[PeerAddress, _Mapping]]] = ...) -> None: ...

class RaftBatch(_message.Message):
    __slots__ = ("cluster", "from_node", "messages", "proposals")
    CLUSTER_FIELD_NUMBER: _ClassVar[int]
    FROM_NODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    PROPOSALS_FIELD_NUMBER: _ClassVar[int]
    cluster: str
    from_node: str
    messages: _containers.RepeatedScalarFieldContainer[bytes]
    proposals: _containers.RepeatedCompositeFieldContainer[Proposal]
    def __init__(self, cluster: _Optional[str] = ..., from_node: _Optional[str] = ..., messages: _Optional[_Iterable[bytes]] = ..., proposals: _Optional[_Iterable[_Union[Proposal, _Mapping]]] = ...) -> None: ...

class Proposal(_message.Message):
    __slots__ = ("proposal_id", "data", "private")
    PROPOSAL_ID_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    PRIVATE_FIELD_NUMBER: _ClassVar[int]
    proposal_id: str
    data: bytes
    private: bool
    def __init__(self, proposal_id: _Optional[str] = ..., data: _Optional[bytes] = ..., private: _Optional[bool] = ...) -> None: ...

class StepAck(_message.Message):
    __slots__ = ("accepted",)
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    accepted: int
    def __init__(self, accepted: _Optional[int] = ...) -> None: ...

class ProposeReply(_message.Message):
    __slots__ = ("status", "index", "leader_id", "leader_address")
    class Status(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        STATUS_UNSPECIFIED: _ClassVar[ProposeReply.Status]
        OK: _ClassVar[ProposeReply.Status]
        NOT_LEADER: _ClassVar[ProposeReply.Status]
        RETRY: _ClassVar[ProposeReply.Status]
    STATUS_UNSPECIFIED: ProposeReply.Status
    OK: ProposeReply.Status
    NOT_LEADER: ProposeReply.Status
    RETRY: ProposeReply.Status
    STATUS_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    LEADER_ID_FIELD_NUMBER: _ClassVar[int]
    LEADER_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    status: ProposeReply.Status
    index: int
    leader_id: str
    leader_address: str
    def __init__(self, status: _Optional[_Union[ProposeReply.Status, str]] = ..., index: _Optional[int] = ..., leader_id: _Optional[str] = ..., leader_address: _Optional[str] = ...) -> None: ...
