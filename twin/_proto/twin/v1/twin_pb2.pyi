from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DataType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DATA_TYPE_UNSPECIFIED: _ClassVar[DataType]
    DATA_TYPE_UINT8: _ClassVar[DataType]
    DATA_TYPE_UINT16: _ClassVar[DataType]
    DATA_TYPE_INT32: _ClassVar[DataType]
    DATA_TYPE_INT64: _ClassVar[DataType]
    DATA_TYPE_FLOAT16: _ClassVar[DataType]
    DATA_TYPE_FLOAT32: _ClassVar[DataType]
    DATA_TYPE_FLOAT64: _ClassVar[DataType]

class VersionState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    VERSION_STATE_UNSPECIFIED: _ClassVar[VersionState]
    VERSION_STATE_LOADING: _ClassVar[VersionState]
    VERSION_STATE_READY: _ClassVar[VersionState]
    VERSION_STATE_FAILED: _ClassVar[VersionState]
    VERSION_STATE_UNLOADING: _ClassVar[VersionState]
DATA_TYPE_UNSPECIFIED: DataType
DATA_TYPE_UINT8: DataType
DATA_TYPE_UINT16: DataType
DATA_TYPE_INT32: DataType
DATA_TYPE_INT64: DataType
DATA_TYPE_FLOAT16: DataType
DATA_TYPE_FLOAT32: DataType
DATA_TYPE_FLOAT64: DataType
VERSION_STATE_UNSPECIFIED: VersionState
VERSION_STATE_LOADING: VersionState
VERSION_STATE_READY: VersionState
VERSION_STATE_FAILED: VersionState
VERSION_STATE_UNLOADING: VersionState

class Tensor(_message.Message):
    __slots__ = ("shape", "dtype", "data")
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    shape: _containers.RepeatedScalarFieldContainer[int]
    dtype: DataType
    data: bytes
    def __init__(self, shape: _Optional[_Iterable[int]] = ..., dtype: _Optional[_Union[DataType, str]] = ..., data: _Optional[bytes] = ...) -> None: ...

class VersionStatus(_message.Message):
    __slots__ = ("model", "version", "state", "error", "serving")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    SERVING_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: int
    state: VersionState
    error: str
    serving: bool
    def __init__(self, model: _Optional[str] = ..., version: _Optional[int] = ..., state: _Optional[_Union[VersionState, str]] = ..., error: _Optional[str] = ..., serving: _Optional[bool] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelSummary]
    def __init__(self, models: _Optional[_Iterable[_Union[ModelSummary, _Mapping]]] = ...) -> None: ...

class ModelSummary(_message.Message):
    __slots__ = ("name", "serving_version", "versions", "data_keys")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SERVING_VERSION_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    DATA_KEYS_FIELD_NUMBER: _ClassVar[int]
    name: str
    serving_version: int
    versions: _containers.RepeatedCompositeFieldContainer[VersionStatus]
    data_keys: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., serving_version: _Optional[int] = ..., versions: _Optional[_Iterable[_Union[VersionStatus, _Mapping]]] = ..., data_keys: _Optional[_Iterable[str]] = ...) -> None: ...

class GetModelInfoRequest(_message.Message):
    __slots__ = ("model", "version")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: int
    def __init__(self, model: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class GetModelInfoResponse(_message.Message):
    __slots__ = ("model", "version", "versions", "data_keys", "package_version", "manifest_json")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    DATA_KEYS_FIELD_NUMBER: _ClassVar[int]
    PACKAGE_VERSION_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_JSON_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: int
    versions: _containers.RepeatedCompositeFieldContainer[VersionStatus]
    data_keys: _containers.RepeatedCompositeFieldContainer[DataKeyInfo]
    package_version: str
    manifest_json: str
    def __init__(self, model: _Optional[str] = ..., version: _Optional[int] = ..., versions: _Optional[_Iterable[_Union[VersionStatus, _Mapping]]] = ..., data_keys: _Optional[_Iterable[_Union[DataKeyInfo, _Mapping]]] = ..., package_version: _Optional[str] = ..., manifest_json: _Optional[str] = ...) -> None: ...

class DataKeyInfo(_message.Message):
    __slots__ = ("data_key", "neuron_ids", "cortical_coordinates", "inputs", "requires_behavior", "requires_pupil_center", "metrics", "n_members")
    DATA_KEY_FIELD_NUMBER: _ClassVar[int]
    NEURON_IDS_FIELD_NUMBER: _ClassVar[int]
    CORTICAL_COORDINATES_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    REQUIRES_BEHAVIOR_FIELD_NUMBER: _ClassVar[int]
    REQUIRES_PUPIL_CENTER_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    N_MEMBERS_FIELD_NUMBER: _ClassVar[int]
    data_key: str
    neuron_ids: _containers.RepeatedScalarFieldContainer[int]
    cortical_coordinates: _containers.RepeatedScalarFieldContainer[float]
    inputs: _containers.RepeatedCompositeFieldContainer[InputSpec]
    requires_behavior: bool
    requires_pupil_center: bool
    metrics: _containers.RepeatedCompositeFieldContainer[Metric]
    n_members: int
    def __init__(self, data_key: _Optional[str] = ..., neuron_ids: _Optional[_Iterable[int]] = ..., cortical_coordinates: _Optional[_Iterable[float]] = ..., inputs: _Optional[_Iterable[_Union[InputSpec, _Mapping]]] = ..., requires_behavior: _Optional[bool] = ..., requires_pupil_center: _Optional[bool] = ..., metrics: _Optional[_Iterable[_Union[Metric, _Mapping]]] = ..., n_members: _Optional[int] = ...) -> None: ...

class InputSpec(_message.Message):
    __slots__ = ("name", "shape", "dtypes", "description", "required")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DTYPES_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    REQUIRED_FIELD_NUMBER: _ClassVar[int]
    name: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    dtypes: _containers.RepeatedScalarFieldContainer[DataType]
    description: str
    required: bool
    def __init__(self, name: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., dtypes: _Optional[_Iterable[_Union[DataType, str]]] = ..., description: _Optional[str] = ..., required: _Optional[bool] = ...) -> None: ...

class Metric(_message.Message):
    __slots__ = ("tier", "name", "value")
    TIER_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    tier: str
    name: str
    value: float
    def __init__(self, tier: _Optional[str] = ..., name: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...

class PredictRequest(_message.Message):
    __slots__ = ("model", "version", "data_key", "images", "behavior", "pupil_center", "neuron_ids", "return_members", "request_id")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    DATA_KEY_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    BEHAVIOR_FIELD_NUMBER: _ClassVar[int]
    PUPIL_CENTER_FIELD_NUMBER: _ClassVar[int]
    NEURON_IDS_FIELD_NUMBER: _ClassVar[int]
    RETURN_MEMBERS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: int
    data_key: str
    images: Tensor
    behavior: Tensor
    pupil_center: Tensor
    neuron_ids: _containers.RepeatedScalarFieldContainer[int]
    return_members: bool
    request_id: str
    def __init__(self, model: _Optional[str] = ..., version: _Optional[int] = ..., data_key: _Optional[str] = ..., images: _Optional[_Union[Tensor, _Mapping]] = ..., behavior: _Optional[_Union[Tensor, _Mapping]] = ..., pupil_center: _Optional[_Union[Tensor, _Mapping]] = ..., neuron_ids: _Optional[_Iterable[int]] = ..., return_members: _Optional[bool] = ..., request_id: _Optional[str] = ...) -> None: ...

class PredictResponse(_message.Message):
    __slots__ = ("model", "version", "data_key", "mean", "std", "members", "neuron_ids", "request_id")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    DATA_KEY_FIELD_NUMBER: _ClassVar[int]
    MEAN_FIELD_NUMBER: _ClassVar[int]
    STD_FIELD_NUMBER: _ClassVar[int]
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    NEURON_IDS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: int
    data_key: str
    mean: Tensor
    std: Tensor
    members: Tensor
    neuron_ids: _containers.RepeatedScalarFieldContainer[int]
    request_id: str
    def __init__(self, model: _Optional[str] = ..., version: _Optional[int] = ..., data_key: _Optional[str] = ..., mean: _Optional[_Union[Tensor, _Mapping]] = ..., std: _Optional[_Union[Tensor, _Mapping]] = ..., members: _Optional[_Union[Tensor, _Mapping]] = ..., neuron_ids: _Optional[_Iterable[int]] = ..., request_id: _Optional[str] = ...) -> None: ...

class GradientRequest(_message.Message):
    __slots__ = ("model", "version", "data_key", "images", "weights", "behavior", "pupil_center", "neuron_ids", "request_id")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    DATA_KEY_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    BEHAVIOR_FIELD_NUMBER: _ClassVar[int]
    PUPIL_CENTER_FIELD_NUMBER: _ClassVar[int]
    NEURON_IDS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: int
    data_key: str
    images: Tensor
    weights: Tensor
    behavior: Tensor
    pupil_center: Tensor
    neuron_ids: _containers.RepeatedScalarFieldContainer[int]
    request_id: str
    def __init__(self, model: _Optional[str] = ..., version: _Optional[int] = ..., data_key: _Optional[str] = ..., images: _Optional[_Union[Tensor, _Mapping]] = ..., weights: _Optional[_Union[Tensor, _Mapping]] = ..., behavior: _Optional[_Union[Tensor, _Mapping]] = ..., pupil_center: _Optional[_Union[Tensor, _Mapping]] = ..., neuron_ids: _Optional[_Iterable[int]] = ..., request_id: _Optional[str] = ...) -> None: ...

class GradientResponse(_message.Message):
    __slots__ = ("model", "version", "data_key", "gradient", "request_id")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    DATA_KEY_FIELD_NUMBER: _ClassVar[int]
    GRADIENT_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: int
    data_key: str
    gradient: Tensor
    request_id: str
    def __init__(self, model: _Optional[str] = ..., version: _Optional[int] = ..., data_key: _Optional[str] = ..., gradient: _Optional[_Union[Tensor, _Mapping]] = ..., request_id: _Optional[str] = ...) -> None: ...

class EvaluateRequest(_message.Message):
    __slots__ = ("model", "version", "data_key", "tier", "per_neuron")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    DATA_KEY_FIELD_NUMBER: _ClassVar[int]
    TIER_FIELD_NUMBER: _ClassVar[int]
    PER_NEURON_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: int
    data_key: str
    tier: str
    per_neuron: bool
    def __init__(self, model: _Optional[str] = ..., version: _Optional[int] = ..., data_key: _Optional[str] = ..., tier: _Optional[str] = ..., per_neuron: _Optional[bool] = ...) -> None: ...

class EvaluateResponse(_message.Message):
    __slots__ = ("model", "version", "data_key", "tier", "single_trial_correlation", "correlation_to_average", "feve", "fev_fraction_above_threshold", "oracle_correlation", "n_trials", "n_neurons", "n_images", "neurons")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    DATA_KEY_FIELD_NUMBER: _ClassVar[int]
    TIER_FIELD_NUMBER: _ClassVar[int]
    SINGLE_TRIAL_CORRELATION_FIELD_NUMBER: _ClassVar[int]
    CORRELATION_TO_AVERAGE_FIELD_NUMBER: _ClassVar[int]
    FEVE_FIELD_NUMBER: _ClassVar[int]
    FEV_FRACTION_ABOVE_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    ORACLE_CORRELATION_FIELD_NUMBER: _ClassVar[int]
    N_TRIALS_FIELD_NUMBER: _ClassVar[int]
    N_NEURONS_FIELD_NUMBER: _ClassVar[int]
    N_IMAGES_FIELD_NUMBER: _ClassVar[int]
    NEURONS_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: int
    data_key: str
    tier: str
    single_trial_correlation: float
    correlation_to_average: float
    feve: float
    fev_fraction_above_threshold: float
    oracle_correlation: float
    n_trials: int
    n_neurons: int
    n_images: int
    neurons: NeuronScores
    def __init__(self, model: _Optional[str] = ..., version: _Optional[int] = ..., data_key: _Optional[str] = ..., tier: _Optional[str] = ..., single_trial_correlation: _Optional[float] = ..., correlation_to_average: _Optional[float] = ..., feve: _Optional[float] = ..., fev_fraction_above_threshold: _Optional[float] = ..., oracle_correlation: _Optional[float] = ..., n_trials: _Optional[int] = ..., n_neurons: _Optional[int] = ..., n_images: _Optional[int] = ..., neurons: _Optional[_Union[NeuronScores, _Mapping]] = ...) -> None: ...

class NeuronScores(_message.Message):
    __slots__ = ("neuron_ids", "single_trial_correlation", "correlation_to_average", "feve")
    NEURON_IDS_FIELD_NUMBER: _ClassVar[int]
    SINGLE_TRIAL_CORRELATION_FIELD_NUMBER: _ClassVar[int]
    CORRELATION_TO_AVERAGE_FIELD_NUMBER: _ClassVar[int]
    FEVE_FIELD_NUMBER: _ClassVar[int]
    neuron_ids: _containers.RepeatedScalarFieldContainer[int]
    single_trial_correlation: _containers.RepeatedScalarFieldContainer[float]
    correlation_to_average: _containers.RepeatedScalarFieldContainer[float]
    feve: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, neuron_ids: _Optional[_Iterable[int]] = ..., single_trial_correlation: _Optional[_Iterable[float]] = ..., correlation_to_average: _Optional[_Iterable[float]] = ..., feve: _Optional[_Iterable[float]] = ...) -> None: ...

class ReloadRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ReloadResponse(_message.Message):
    __slots__ = ("loaded", "failed", "unloaded", "models")
    LOADED_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    UNLOADED_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    loaded: _containers.RepeatedCompositeFieldContainer[VersionStatus]
    failed: _containers.RepeatedCompositeFieldContainer[VersionStatus]
    unloaded: _containers.RepeatedCompositeFieldContainer[VersionStatus]
    models: _containers.RepeatedCompositeFieldContainer[ModelSummary]
    def __init__(self, loaded: _Optional[_Iterable[_Union[VersionStatus, _Mapping]]] = ..., failed: _Optional[_Iterable[_Union[VersionStatus, _Mapping]]] = ..., unloaded: _Optional[_Iterable[_Union[VersionStatus, _Mapping]]] = ..., models: _Optional[_Iterable[_Union[ModelSummary, _Mapping]]] = ...) -> None: ...
