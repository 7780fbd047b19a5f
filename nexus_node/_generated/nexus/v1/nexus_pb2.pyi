from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class JobState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOB_STATE_UNSPECIFIED: _ClassVar[JobState]
    PENDING: _ClassVar[JobState]
    PREPARING: _ClassVar[JobState]
    SEARCHING: _ClassVar[JobState]
    FINALIZING: _ClassVar[JobState]
    COMPLETED: _ClassVar[JobState]
    FAILED: _ClassVar[JobState]
    CANCELLED: _ClassVar[JobState]

class TaskType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TASK_TYPE_UNSPECIFIED: _ClassVar[TaskType]
    REGRESSION: _ClassVar[TaskType]
    BINARY: _ClassVar[TaskType]
    MULTICLASS: _ClassVar[TaskType]

class JobEventKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOB_EVENT_KIND_UNSPECIFIED: _ClassVar[JobEventKind]
    STATE_CHANGED: _ClassVar[JobEventKind]
    TRIAL_FINISHED: _ClassVar[JobEventKind]
    NEW_BEST: _ClassVar[JobEventKind]
    SNAPSHOT: _ClassVar[JobEventKind]

class NodeRole(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    NODE_ROLE_UNSPECIFIED: _ClassVar[NodeRole]
    COORDINATOR: _ClassVar[NodeRole]
    VOTER: _ClassVar[NodeRole]
    NON_VOTER: _ClassVar[NodeRole]

class TokenRole(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TOKEN_ROLE_UNSPECIFIED: _ClassVar[TokenRole]
    READ: _ClassVar[TokenRole]
    SUBMIT: _ClassVar[TokenRole]
    ADMIN: _ClassVar[TokenRole]
JOB_STATE_UNSPECIFIED: JobState
PENDING: JobState
PREPARING: JobState
SEARCHING: JobState
FINALIZING: JobState
COMPLETED: JobState
FAILED: JobState
CANCELLED: JobState
TASK_TYPE_UNSPECIFIED: TaskType
REGRESSION: TaskType
BINARY: TaskType
MULTICLASS: TaskType
JOB_EVENT_KIND_UNSPECIFIED: JobEventKind
STATE_CHANGED: JobEventKind
TRIAL_FINISHED: JobEventKind
NEW_BEST: JobEventKind
SNAPSHOT: JobEventKind
NODE_ROLE_UNSPECIFIED: NodeRole
COORDINATOR: NodeRole
VOTER: NodeRole
NON_VOTER: NodeRole
TOKEN_ROLE_UNSPECIFIED: TokenRole
READ: TokenRole
SUBMIT: TokenRole
ADMIN: TokenRole

class JobSpec(_message.Message):
    __slots__ = ("target", "use_case", "max_trials", "time_budget_seconds", "metric", "seed", "filename", "constraints_json", "drop_columns", "size_bytes")
    TARGET_FIELD_NUMBER: _ClassVar[int]
    USE_CASE_FIELD_NUMBER: _ClassVar[int]
    MAX_TRIALS_FIELD_NUMBER: _ClassVar[int]
    TIME_BUDGET_SECONDS_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    FILENAME_FIELD_NUMBER: _ClassVar[int]
    CONSTRAINTS_JSON_FIELD_NUMBER: _ClassVar[int]
    DROP_COLUMNS_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    target: str
    use_case: str
    max_trials: int
    time_budget_seconds: float
    metric: str
    seed: int
    filename: str
    constraints_json: str
    drop_columns: _containers.RepeatedScalarFieldContainer[str]
    size_bytes: int
    def __init__(self, target: _Optional[str] = ..., use_case: _Optional[str] = ..., max_trials: _Optional[int] = ..., time_budget_seconds: _Optional[float] = ..., metric: _Optional[str] = ..., seed: _Optional[int] = ..., filename: _Optional[str] = ..., constraints_json: _Optional[str] = ..., drop_columns: _Optional[_Iterable[str]] = ..., size_bytes: _Optional[int] = ...) -> None: ...

class SubmitJobRequest(_message.Message):
    __slots__ = ("spec", "chunk")
    SPEC_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    spec: JobSpec
    chunk: bytes
    def __init__(self, spec: _Optional[_Union[JobSpec, _Mapping]] = ..., chunk: _Optional[bytes] = ...) -> None: ...

class SubmitJobResponse(_message.Message):
    __slots__ = ("job_id", "job")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    JOB_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    job: Job
    def __init__(self, job_id: _Optional[str] = ..., job: _Optional[_Union[Job, _Mapping]] = ...) -> None: ...

class TrialCounts(_message.Message):
    __slots__ = ("complete", "pruned", "fail", "running", "waiting", "lost")
    COMPLETE_FIELD_NUMBER: _ClassVar[int]
    PRUNED_FIELD_NUMBER: _ClassVar[int]
    FAIL_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    WAITING_FIELD_NUMBER: _ClassVar[int]
    LOST_FIELD_NUMBER: _ClassVar[int]
    complete: int
    pruned: int
    fail: int
    running: int
    waiting: int
    lost: int
    def __init__(self, complete: _Optional[int] = ..., pruned: _Optional[int] = ..., fail: _Optional[int] = ..., running: _Optional[int] = ..., waiting: _Optional[int] = ..., lost: _Optional[int] = ...) -> None: ...

class FeatureImportance(_message.Message):
    __slots__ = ("column", "importance")
    COLUMN_FIELD_NUMBER: _ClassVar[int]
    IMPORTANCE_FIELD_NUMBER: _ClassVar[int]
    column: str
    importance: float
    def __init__(self, column: _Optional[str] = ..., importance: _Optional[float] = ...) -> None: ...

class Job(_message.Message):
    __slots__ = ("job_id", "state", "spec", "message", "task", "metric", "maximize", "best_value", "has_best", "trials", "model_id", "test_metrics", "feature_importance", "summary", "constraints_source", "constraints_json", "profile_json", "created_at", "started_at", "finished_at", "seed", "dataset_sha256", "dataset_bytes", "encoding", "study_name", "best_params_json", "node_id", "constraints_model", "constraints_rationale", "constraints_fallback", "summary_source", "summary_model", "summary_fallback", "evaluated_model_rows", "test_rows", "final_model_rows", "members", "model_selection", "input_format")
    class TestMetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    MAXIMIZE_FIELD_NUMBER: _ClassVar[int]
    BEST_VALUE_FIELD_NUMBER: _ClassVar[int]
    HAS_BEST_FIELD_NUMBER: _ClassVar[int]
    TRIALS_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    TEST_METRICS_FIELD_NUMBER: _ClassVar[int]
    FEATURE_IMPORTANCE_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    CONSTRAINTS_SOURCE_FIELD_NUMBER: _ClassVar[int]
    CONSTRAINTS_JSON_FIELD_NUMBER: _ClassVar[int]
    PROFILE_JSON_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    DATASET_SHA256_FIELD_NUMBER: _ClassVar[int]
    DATASET_BYTES_FIELD_NUMBER: _ClassVar[int]
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    STUDY_NAME_FIELD_NUMBER: _ClassVar[int]
    BEST_PARAMS_JSON_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    CONSTRAINTS_MODEL_FIELD_NUMBER: _ClassVar[int]
    CONSTRAINTS_RATIONALE_FIELD_NUMBER: _ClassVar[int]
    CONSTRAINTS_FALLBACK_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_SOURCE_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_MODEL_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FALLBACK_FIELD_NUMBER: _ClassVar[int]
    EVALUATED_MODEL_ROWS_FIELD_NUMBER: _ClassVar[int]
    TEST_ROWS_FIELD_NUMBER: _ClassVar[int]
    FINAL_MODEL_ROWS_FIELD_NUMBER: _ClassVar[int]
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    MODEL_SELECTION_FIELD_NUMBER: _ClassVar[int]
    INPUT_FORMAT_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    state: JobState
    spec: JobSpec
    message: str
    task: TaskType
    metric: str
    maximize: bool
    best_value: float
    has_best: bool
    trials: TrialCounts
    model_id: str
    test_metrics: _containers.ScalarMap[str, float]
    feature_importance: _containers.RepeatedCompositeFieldContainer[FeatureImportance]
    summary: str
    constraints_source: str
    constraints_json: str
    profile_json: str
    created_at: float
    started_at: float
    finished_at: float
    seed: int
    dataset_sha256: str
    dataset_bytes: int
    encoding: str
    study_name: str
    best_params_json: str
    node_id: str
    constraints_model: str
    constraints_rationale: str
    constraints_fallback: str
    summary_source: str
    summary_model: str
    summary_fallback: str
    evaluated_model_rows: int
    test_rows: int
    final_model_rows: int
    members: _containers.RepeatedCompositeFieldContainer[EnsembleMember]
    model_selection: str
    input_format: str
    def __init__(self, job_id: _Optional[str] = ..., state: _Optional[_Union[JobState, str]] = ..., spec: _Optional[_Union[JobSpec, _Mapping]] = ..., message: _Optional[str] = ..., task: _Optional[_Union[TaskType, str]] = ..., metric: _Optional[str] = ..., maximize: _Optional[bool] = ..., best_value: _Optional[float] = ..., has_best: _Optional[bool] = ..., trials: _Optional[_Union[TrialCounts, _Mapping]] = ..., model_id: _Optional[str] = ..., test_metrics: _Optional[_Mapping[str, float]] = ..., feature_importance: _Optional[_Iterable[_Union[FeatureImportance, _Mapping]]] = ..., summary: _Optional[str] = ..., constraints_source: _Optional[str] = ..., constraints_json: _Optional[str] = ..., profile_json: _Optional[str] = ..., created_at: _Optional[float] = ..., started_at: _Optional[float] = ..., finished_at: _Optional[float] = ..., seed: _Optional[int] = ..., dataset_sha256: _Optional[str] = ..., dataset_bytes: _Optional[int] = ..., encoding: _Optional[str] = ..., study_name: _Optional[str] = ..., best_params_json: _Optional[str] = ..., node_id: _Optional[str] = ..., constraints_model: _Optional[str] = ..., constraints_rationale: _Optional[str] = ..., constraints_fallback: _Optional[str] = ..., summary_source: _Optional[str] = ..., summary_model: _Optional[str] = ..., summary_fallback: _Optional[str] = ..., evaluated_model_rows: _Optional[int] = ..., test_rows: _Optional[int] = ..., final_model_rows: _Optional[int] = ..., members: _Optional[_Iterable[_Union[EnsembleMember, _Mapping]]] = ..., model_selection: _Optional[str] = ..., input_format: _Optional[str] = ...) -> None: ...

class EnsembleMember(_message.Message):
    __slots__ = ("trial", "family", "weight", "epochs_trained", "params_json", "node_id")
    TRIAL_FIELD_NUMBER: _ClassVar[int]
    FAMILY_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    EPOCHS_TRAINED_FIELD_NUMBER: _ClassVar[int]
    PARAMS_JSON_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    trial: int
    family: str
    weight: float
    epochs_trained: int
    params_json: str
    node_id: str
    def __init__(self, trial: _Optional[int] = ..., family: _Optional[str] = ..., weight: _Optional[float] = ..., epochs_trained: _Optional[int] = ..., params_json: _Optional[str] = ..., node_id: _Optional[str] = ...) -> None: ...

class GetJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class ListJobsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListJobsResponse(_message.Message):
    __slots__ = ("jobs",)
    JOBS_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[Job]
    def __init__(self, jobs: _Optional[_Iterable[_Union[Job, _Mapping]]] = ...) -> None: ...

class CancelJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class DeleteJobRequest(_message.Message):
    __slots__ = ("job_id", "keep_models")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    KEEP_MODELS_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    keep_models: bool
    def __init__(self, job_id: _Optional[str] = ..., keep_models: _Optional[bool] = ...) -> None: ...

class DeleteJobResponse(_message.Message):
    __slots__ = ("job_id", "deleted_models", "kept_models", "study_deleted")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    DELETED_MODELS_FIELD_NUMBER: _ClassVar[int]
    KEPT_MODELS_FIELD_NUMBER: _ClassVar[int]
    STUDY_DELETED_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    deleted_models: _containers.RepeatedScalarFieldContainer[str]
    kept_models: _containers.RepeatedScalarFieldContainer[str]
    study_deleted: bool
    def __init__(self, job_id: _Optional[str] = ..., deleted_models: _Optional[_Iterable[str]] = ..., kept_models: _Optional[_Iterable[str]] = ..., study_deleted: _Optional[bool] = ...) -> None: ...

class DeleteModelRequest(_message.Message):
    __slots__ = ("model_id",)
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    def __init__(self, model_id: _Optional[str] = ...) -> None: ...

class DeleteModelResponse(_message.Message):
    __slots__ = ("model_id", "job_id")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    job_id: str
    def __init__(self, model_id: _Optional[str] = ..., job_id: _Optional[str] = ...) -> None: ...

class WatchJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class TrialInfo(_message.Message):
    __slots__ = ("number", "state", "value", "has_value", "params_json", "duration_seconds", "node_id", "message", "last_step", "retry_of")
    NUMBER_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    HAS_VALUE_FIELD_NUMBER: _ClassVar[int]
    PARAMS_JSON_FIELD_NUMBER: _ClassVar[int]
    DURATION_SECONDS_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    LAST_STEP_FIELD_NUMBER: _ClassVar[int]
    RETRY_OF_FIELD_NUMBER: _ClassVar[int]
    number: int
    state: str
    value: float
    has_value: bool
    params_json: str
    duration_seconds: float
    node_id: str
    message: str
    last_step: int
    retry_of: int
    def __init__(self, number: _Optional[int] = ..., state: _Optional[str] = ..., value: _Optional[float] = ..., has_value: _Optional[bool] = ..., params_json: _Optional[str] = ..., duration_seconds: _Optional[float] = ..., node_id: _Optional[str] = ..., message: _Optional[str] = ..., last_step: _Optional[int] = ..., retry_of: _Optional[int] = ...) -> None: ...

class JobEvent(_message.Message):
    __slots__ = ("kind", "job", "trial")
    KIND_FIELD_NUMBER: _ClassVar[int]
    JOB_FIELD_NUMBER: _ClassVar[int]
    TRIAL_FIELD_NUMBER: _ClassVar[int]
    kind: JobEventKind
    job: Job
    trial: TrialInfo
    def __init__(self, kind: _Optional[_Union[JobEventKind, str]] = ..., job: _Optional[_Union[Job, _Mapping]] = ..., trial: _Optional[_Union[TrialInfo, _Mapping]] = ...) -> None: ...

class ListTrialsRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class ListTrialsResponse(_message.Message):
    __slots__ = ("trials",)
    TRIALS_FIELD_NUMBER: _ClassVar[int]
    trials: _containers.RepeatedCompositeFieldContainer[TrialInfo]
    def __init__(self, trials: _Optional[_Iterable[_Union[TrialInfo, _Mapping]]] = ...) -> None: ...

class ReportStepsRequest(_message.Message):
    __slots__ = ("trial_id", "steps")
    TRIAL_ID_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    trial_id: int
    steps: _containers.RepeatedCompositeFieldContainer[TrialStep]
    def __init__(self, trial_id: _Optional[int] = ..., steps: _Optional[_Iterable[_Union[TrialStep, _Mapping]]] = ...) -> None: ...

class TrialStep(_message.Message):
    __slots__ = ("step", "value")
    STEP_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    step: int
    value: float
    def __init__(self, step: _Optional[int] = ..., value: _Optional[float] = ...) -> None: ...

class ReportStepsReply(_message.Message):
    __slots__ = ("written",)
    WRITTEN_FIELD_NUMBER: _ClassVar[int]
    written: int
    def __init__(self, written: _Optional[int] = ...) -> None: ...

class FinishTrialRequest(_message.Message):
    __slots__ = ("trial_id", "steps", "user_attrs_json", "state", "value")
    TRIAL_ID_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    USER_ATTRS_JSON_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    trial_id: int
    steps: _containers.RepeatedCompositeFieldContainer[TrialStep]
    user_attrs_json: str
    state: str
    value: float
    def __init__(self, trial_id: _Optional[int] = ..., steps: _Optional[_Iterable[_Union[TrialStep, _Mapping]]] = ..., user_attrs_json: _Optional[str] = ..., state: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...

class FinishTrialReply(_message.Message):
    __slots__ = ("state", "value", "has_value")
    STATE_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    HAS_VALUE_FIELD_NUMBER: _ClassVar[int]
    state: str
    value: float
    has_value: bool
    def __init__(self, state: _Optional[str] = ..., value: _Optional[float] = ..., has_value: _Optional[bool] = ...) -> None: ...

class Model(_message.Message):
    __slots__ = ("model_id", "job_id", "task", "target", "input_columns", "classes", "test_metrics", "artifact_sha256", "artifact_bytes", "created_at", "family", "params_json", "members", "selection")
    class TestMetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    INPUT_COLUMNS_FIELD_NUMBER: _ClassVar[int]
    CLASSES_FIELD_NUMBER: _ClassVar[int]
    TEST_METRICS_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_SHA256_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_BYTES_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    FAMILY_FIELD_NUMBER: _ClassVar[int]
    PARAMS_JSON_FIELD_NUMBER: _ClassVar[int]
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    SELECTION_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    job_id: str
    task: TaskType
    target: str
    input_columns: _containers.RepeatedScalarFieldContainer[str]
    classes: _containers.RepeatedScalarFieldContainer[str]
    test_metrics: _containers.ScalarMap[str, float]
    artifact_sha256: str
    artifact_bytes: int
    created_at: float
    family: str
    params_json: str
    members: _containers.RepeatedCompositeFieldContainer[EnsembleMember]
    selection: str
    def __init__(self, model_id: _Optional[str] = ..., job_id: _Optional[str] = ..., task: _Optional[_Union[TaskType, str]] = ..., target: _Optional[str] = ..., input_columns: _Optional[_Iterable[str]] = ..., classes: _Optional[_Iterable[str]] = ..., test_metrics: _Optional[_Mapping[str, float]] = ..., artifact_sha256: _Optional[str] = ..., artifact_bytes: _Optional[int] = ..., created_at: _Optional[float] = ..., family: _Optional[str] = ..., params_json: _Optional[str] = ..., members: _Optional[_Iterable[_Union[EnsembleMember, _Mapping]]] = ..., selection: _Optional[str] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[Model]
    def __init__(self, models: _Optional[_Iterable[_Union[Model, _Mapping]]] = ...) -> None: ...

class GetModelRequest(_message.Message):
    __slots__ = ("model_id",)
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    def __init__(self, model_id: _Optional[str] = ...) -> None: ...

class PredictRequest(_message.Message):
    __slots__ = ("model_id", "chunk")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    chunk: bytes
    def __init__(self, model_id: _Optional[str] = ..., chunk: _Optional[bytes] = ...) -> None: ...

class Prediction(_message.Message):
    __slots__ = ("row", "label", "value", "probabilities", "outside_range", "unseen_categories", "empty")
    ROW_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    PROBABILITIES_FIELD_NUMBER: _ClassVar[int]
    OUTSIDE_RANGE_FIELD_NUMBER: _ClassVar[int]
    UNSEEN_CATEGORIES_FIELD_NUMBER: _ClassVar[int]
    EMPTY_FIELD_NUMBER: _ClassVar[int]
    row: int
    label: str
    value: float
    probabilities: _containers.RepeatedScalarFieldContainer[float]
    outside_range: _containers.RepeatedScalarFieldContainer[str]
    unseen_categories: _containers.RepeatedScalarFieldContainer[str]
    empty: bool
    def __init__(self, row: _Optional[int] = ..., label: _Optional[str] = ..., value: _Optional[float] = ..., probabilities: _Optional[_Iterable[float]] = ..., outside_range: _Optional[_Iterable[str]] = ..., unseen_categories: _Optional[_Iterable[str]] = ..., empty: _Optional[bool] = ...) -> None: ...

class PredictWarnings(_message.Message):
    __slots__ = ("rows", "unseen_category_rows", "unseen_categories", "empty_rows")
    class UnseenCategoriesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    ROWS_FIELD_NUMBER: _ClassVar[int]
    UNSEEN_CATEGORY_ROWS_FIELD_NUMBER: _ClassVar[int]
    UNSEEN_CATEGORIES_FIELD_NUMBER: _ClassVar[int]
    EMPTY_ROWS_FIELD_NUMBER: _ClassVar[int]
    rows: int
    unseen_category_rows: int
    unseen_categories: _containers.ScalarMap[str, int]
    empty_rows: int
    def __init__(self, rows: _Optional[int] = ..., unseen_category_rows: _Optional[int] = ..., unseen_categories: _Optional[_Mapping[str, int]] = ..., empty_rows: _Optional[int] = ...) -> None: ...

class PredictResponse(_message.Message):
    __slots__ = ("classes", "predictions", "warnings")
    CLASSES_FIELD_NUMBER: _ClassVar[int]
    PREDICTIONS_FIELD_NUMBER: _ClassVar[int]
    WARNINGS_FIELD_NUMBER: _ClassVar[int]
    classes: _containers.RepeatedScalarFieldContainer[str]
    predictions: _containers.RepeatedCompositeFieldContainer[Prediction]
    warnings: PredictWarnings
    def __init__(self, classes: _Optional[_Iterable[str]] = ..., predictions: _Optional[_Iterable[_Union[Prediction, _Mapping]]] = ..., warnings: _Optional[_Union[PredictWarnings, _Mapping]] = ...) -> None: ...

class ExportModelRequest(_message.Message):
    __slots__ = ("model_id",)
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    def __init__(self, model_id: _Optional[str] = ...) -> None: ...

class ExportModelChunk(_message.Message):
    __slots__ = ("data", "sha256", "total_bytes")
    DATA_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    sha256: str
    total_bytes: int
    def __init__(self, data: _Optional[bytes] = ..., sha256: _Optional[str] = ..., total_bytes: _Optional[int] = ...) -> None: ...

class NodeInfo(_message.Message):
    __slots__ = ("node_id", "address", "role", "term", "last_contact", "slots_total", "slots_busy", "memory_total_bytes", "memory_free_bytes", "accelerator", "running", "version", "disk_free_bytes", "disk_low", "blob_count", "blob_bytes")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    TERM_FIELD_NUMBER: _ClassVar[int]
    LAST_CONTACT_FIELD_NUMBER: _ClassVar[int]
    SLOTS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    SLOTS_BUSY_FIELD_NUMBER: _ClassVar[int]
    MEMORY_TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    MEMORY_FREE_BYTES_FIELD_NUMBER: _ClassVar[int]
    ACCELERATOR_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    DISK_FREE_BYTES_FIELD_NUMBER: _ClassVar[int]
    DISK_LOW_FIELD_NUMBER: _ClassVar[int]
    BLOB_COUNT_FIELD_NUMBER: _ClassVar[int]
    BLOB_BYTES_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    address: str
    role: NodeRole
    term: int
    last_contact: float
    slots_total: int
    slots_busy: int
    memory_total_bytes: int
    memory_free_bytes: int
    accelerator: str
    running: _containers.RepeatedScalarFieldContainer[str]
    version: str
    disk_free_bytes: int
    disk_low: bool
    blob_count: int
    blob_bytes: int
    def __init__(self, node_id: _Optional[str] = ..., address: _Optional[str] = ..., role: _Optional[_Union[NodeRole, str]] = ..., term: _Optional[int] = ..., last_contact: _Optional[float] = ..., slots_total: _Optional[int] = ..., slots_busy: _Optional[int] = ..., memory_total_bytes: _Optional[int] = ..., memory_free_bytes: _Optional[int] = ..., accelerator: _Optional[str] = ..., running: _Optional[_Iterable[str]] = ..., version: _Optional[str] = ..., disk_free_bytes: _Optional[int] = ..., disk_low: _Optional[bool] = ..., blob_count: _Optional[int] = ..., blob_bytes: _Optional[int] = ...) -> None: ...

class GetClusterRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class WatchClusterRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Cluster(_message.Message):
    __slots__ = ("cluster_name", "coordinator_id", "term", "nodes", "discovered")
    CLUSTER_NAME_FIELD_NUMBER: _ClassVar[int]
    COORDINATOR_ID_FIELD_NUMBER: _ClassVar[int]
    TERM_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    DISCOVERED_FIELD_NUMBER: _ClassVar[int]
    cluster_name: str
    coordinator_id: str
    term: int
    nodes: _containers.RepeatedCompositeFieldContainer[NodeInfo]
    discovered: _containers.RepeatedCompositeFieldContainer[DiscoveredPeer]
    def __init__(self, cluster_name: _Optional[str] = ..., coordinator_id: _Optional[str] = ..., term: _Optional[int] = ..., nodes: _Optional[_Iterable[_Union[NodeInfo, _Mapping]]] = ..., discovered: _Optional[_Iterable[_Union[DiscoveredPeer, _Mapping]]] = ...) -> None: ...

class DiscoveredPeer(_message.Message):
    __slots__ = ("node_id", "address", "source", "last_seen")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    address: str
    source: str
    last_seen: float
    def __init__(self, node_id: _Optional[str] = ..., address: _Optional[str] = ..., source: _Optional[str] = ..., last_seen: _Optional[float] = ...) -> None: ...

class CreateTokenRequest(_message.Message):
    __slots__ = ("name", "role")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    name: str
    role: TokenRole
    def __init__(self, name: _Optional[str] = ..., role: _Optional[_Union[TokenRole, str]] = ...) -> None: ...

class TokenInfo(_message.Message):
    __slots__ = ("name", "role", "created_at")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    name: str
    role: TokenRole
    created_at: float
    def __init__(self, name: _Optional[str] = ..., role: _Optional[_Union[TokenRole, str]] = ..., created_at: _Optional[float] = ...) -> None: ...

class CreateTokenReply(_message.Message):
    __slots__ = ("token", "secret")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    SECRET_FIELD_NUMBER: _ClassVar[int]
    token: TokenInfo
    secret: str
    def __init__(self, token: _Optional[_Union[TokenInfo, _Mapping]] = ..., secret: _Optional[str] = ...) -> None: ...

class ListTokensRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListTokensReply(_message.Message):
    __slots__ = ("tokens",)
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    tokens: _containers.RepeatedCompositeFieldContainer[TokenInfo]
    def __init__(self, tokens: _Optional[_Iterable[_Union[TokenInfo, _Mapping]]] = ...) -> None: ...

class RevokeTokenRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class RevokeTokenReply(_message.Message):
    __slots__ = ("token",)
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    token: TokenInfo
    def __init__(self, token: _Optional[_Union[TokenInfo, _Mapping]] = ...) -> None: ...
