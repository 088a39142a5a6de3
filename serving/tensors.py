"""numpy arrays <-> tensors on the wire, for the twin.v1 API and the KServe v2 inference protocol.

Both protocols carry an array as a shape, a dtype and raw little-endian row-major bytes (KServe may
also use typed repeated fields on input). Every decode checks the dtype against the caller's allowed
list and the byte length against shape x itemsize, and raises `InvalidInput` naming the field, the value
seen and what was expected. Decoded arrays are read-only views of the request bytes (no copy).
Responses use raw bytes only: KServe clients (tritonclient) decode `raw_output_contents`.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from typing import Any

import numpy as np
from numpy.typing import DTypeLike

from twin._proto.inference import grpc_predict_v2_pb2 as kserve_pb2
from twin._proto.twin.v1 import twin_pb2
from twin.errors import InvalidInput

__all__ = [
    "FLOAT_DTYPES",
    "IMAGE_DTYPES",
    "KSERVE_DATATYPES",
    "from_kserve_inputs",
    "from_tensor",
    "kserve_datatype",
    "optional_tensor",
    "set_kserve_outputs",
    "to_tensor",
]

# Element types accepted by default for each kind of input.
IMAGE_DTYPES: tuple[np.dtype, ...] = tuple(
    map(np.dtype, ("uint8", "uint16", "float16", "float32", "float64"))
)
FLOAT_DTYPES: tuple[np.dtype, ...] = tuple(map(np.dtype, ("float16", "float32", "float64")))

# twin.v1 DataType -> little-endian numpy dtype.
_TWIN_DTYPES: dict[twin_pb2.DataType, np.dtype] = {
    twin_pb2.DATA_TYPE_UINT8: np.dtype("<u1"),
    twin_pb2.DATA_TYPE_UINT16: np.dtype("<u2"),
    twin_pb2.DATA_TYPE_INT32: np.dtype("<i4"),
    twin_pb2.DATA_TYPE_INT64: np.dtype("<i8"),
    twin_pb2.DATA_TYPE_FLOAT16: np.dtype("<f2"),
    twin_pb2.DATA_TYPE_FLOAT32: np.dtype("<f4"),
    twin_pb2.DATA_TYPE_FLOAT64: np.dtype("<f8"),
}
_TWIN_CODES: dict[np.dtype, twin_pb2.DataType] = {
    dtype.newbyteorder("="): code for code, dtype in _TWIN_DTYPES.items()
}

# KServe v2 datatype -> (little-endian numpy dtype, InferTensorContents field or None for raw-only).
_KSERVE: dict[str, tuple[np.dtype, str | None]] = {
    "BOOL": (np.dtype("?"), "bool_contents"),
    "UINT8": (np.dtype("<u1"), "uint_contents"),
    "UINT16": (np.dtype("<u2"), "uint_contents"),
    "UINT32": (np.dtype("<u4"), "uint_contents"),
    "UINT64": (np.dtype("<u8"), "uint64_contents"),
    "INT8": (np.dtype("<i1"), "int_contents"),
    "INT16": (np.dtype("<i2"), "int_contents"),
    "INT32": (np.dtype("<i4"), "int_contents"),
    "INT64": (np.dtype("<i8"), "int64_contents"),
    "FP16": (np.dtype("<f2"), None),
    "FP32": (np.dtype("<f4"), "fp32_contents"),
    "FP64": (np.dtype("<f8"), "fp64_contents"),
}
KSERVE_DATATYPES: tuple[str, ...] = tuple(_KSERVE)
_KSERVE_NAMES: dict[np.dtype, str] = {dtype.newbyteorder("="): name for name, (dtype, _) in _KSERVE.items()}
_WIDE = {"b": np.dtype(bool), "i": np.dtype(np.int64), "u": np.dtype(np.uint64), "f": np.dtype(np.float64)}
_CONTENT_FIELDS = sorted({f for _, f in _KSERVE.values() if f} | {"bytes_contents"})


# ---------------------------------------------------------------------------------------------------
# Shared checks


def _native(dtype: DTypeLike) -> np.dtype:
    return np.dtype(dtype).newbyteorder("=")


def _check_dtype(field: str, dtype: np.dtype, seen: str, allowed: Collection[DTypeLike] | None) -> None:
    if allowed is None:
        return
    names = sorted({_native(a).name for a in allowed})
    if _native(dtype).name not in names:
        raise InvalidInput(f"{field}: dtype {seen}; expected one of {names}")


def _check_shape(field: str, shape: tuple[int, ...], ndim: int | Collection[int] | None) -> None:
    if any(d < 0 for d in shape):
        raise InvalidInput(f"{field}: shape {list(shape)} has a negative dimension; expected sizes >= 0")
    if ndim is None:
        return
    wanted = {ndim} if isinstance(ndim, int) else set(ndim)
    if len(shape) not in wanted:
        want = " or ".join(f"{n}-D" for n in sorted(wanted))
        raise InvalidInput(f"{field}: shape {list(shape)} ({len(shape)}-D); expected {want}")


def _from_bytes(field: str, data: bytes, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
    expected = math.prod(shape) * dtype.itemsize
    if len(data) != expected:
        raise InvalidInput(
            f"{field}: {len(data)} bytes; expected {expected} for shape {list(shape)} of {dtype.name} "
            f"({dtype.itemsize} bytes each)"
        )
    array = np.frombuffer(data, dtype=dtype).reshape(shape)
    return array if dtype.isnative else array.astype(dtype.newbyteorder("="))


def _le_bytes(array: np.ndarray, dtype: np.dtype) -> bytes:
    return np.ascontiguousarray(array, dtype=dtype).tobytes()


# ---------------------------------------------------------------------------------------------------
# twin.v1 Tensor


def to_tensor(array: Any, field: str = "array") -> twin_pb2.Tensor:
    """`array` as a twin.v1 Tensor (little-endian, row-major). Booleans and other types are refused."""
    arr = np.asarray(array)
    code = _TWIN_CODES.get(_native(arr.dtype))
    if code is None:
        names = sorted(d.name for d in _TWIN_CODES)
        raise InvalidInput(f"{field}: dtype {arr.dtype}; expected one of {names}")
    return twin_pb2.Tensor(shape=arr.shape, dtype=code, data=_le_bytes(arr, _TWIN_DTYPES[code]))


def from_tensor(
    tensor: twin_pb2.Tensor,
    field: str,
    *,
    dtypes: Collection[DTypeLike] | None = None,
    ndim: int | Collection[int] | None = None,
) -> np.ndarray:
    """The array a twin.v1 Tensor carries, checked against allowed `dtypes` and dimensionality `ndim`."""
    dtype = _TWIN_DTYPES.get(tensor.dtype)
    if dtype is None:
        seen = (
            twin_pb2.DataType.Name(tensor.dtype)
            if tensor.dtype in twin_pb2.DataType.values()
            else tensor.dtype
        )
        names = [twin_pb2.DataType.Name(c) for c in _TWIN_DTYPES]
        raise InvalidInput(f"{field}: dtype {seen}; expected one of {names}")
    shape = tuple(int(d) for d in tensor.shape)
    _check_dtype(field, dtype, twin_pb2.DataType.Name(tensor.dtype), dtypes)
    _check_shape(field, shape, ndim)
    return _from_bytes(field, tensor.data, dtype, shape)


def optional_tensor(
    message: Any,
    field: str,
    *,
    dtypes: Collection[DTypeLike] | None = None,
    ndim: int | Collection[int] | None = None,
) -> np.ndarray | None:
    """`message.<field>` decoded by `from_tensor`, or None when the request leaves the field unset."""
    if not message.HasField(field):
        return None
    return from_tensor(getattr(message, field), field, dtypes=dtypes, ndim=ndim)


# ---------------------------------------------------------------------------------------------------
# KServe v2


def kserve_datatype(dtype: DTypeLike) -> str:
    """The KServe v2 datatype string of a numpy dtype: float32 -> "FP32", uint8 -> "UINT8", ..."""
    name = _KSERVE_NAMES.get(_native(dtype))
    if name is None:
        raise InvalidInput(f"dtype: {np.dtype(dtype)}; expected one with a KServe datatype {list(_KSERVE)}")
    return name


def _kserve_dtype(
    field: str, datatype: str, allowed: Collection[DTypeLike] | None
) -> tuple[np.dtype, str | None]:
    if datatype not in _KSERVE:
        raise InvalidInput(f"{field}: datatype {datatype!r}; expected one of {list(_KSERVE)}")
    dtype, content_field = _KSERVE[datatype]
    if allowed is not None:
        names = sorted({kserve_datatype(a) for a in allowed})
        if datatype not in names:
            raise InvalidInput(f"{field}: datatype {datatype!r}; expected one of {names}")
    return dtype, content_field


def _typed_contents(
    field: str, tensor: Any, dtype: np.dtype, content_field: str | None, shape: tuple[int, ...]
) -> np.ndarray:
    """The array of an input given in typed repeated fields (`contents.fp32_contents`, ...)."""
    if content_field is None:
        raise InvalidInput(
            f"{field}: datatype {tensor.datatype} has no typed contents; send it in raw_input_contents"
        )
    used = [f for f in _CONTENT_FIELDS if len(getattr(tensor.contents, f))]
    if used and used != [content_field]:
        raise InvalidInput(
            f"{field}: contents in {used}; expected only contents.{content_field} for {tensor.datatype}"
        )
    values = getattr(tensor.contents, content_field)
    count = math.prod(shape)
    if len(values) != count:
        raise InvalidInput(
            f"{field}: {len(values)} values in contents.{content_field}; "
            f"expected {count} for shape {list(shape)}"
        )
    wide = np.asarray(values, dtype=_WIDE[dtype.kind])
    if dtype.kind in "iu" and wide.size:
        info = np.iinfo(dtype)
        low, high = wide.min(), wide.max()
        if low < info.min or high > info.max:
            raise InvalidInput(
                f"{field}: values from {low} to {high}; "
                f"expected {tensor.datatype} values in [{info.min}, {info.max}]"
            )
    return wide.astype(dtype.newbyteorder("=")).reshape(shape)


def from_kserve_inputs(
    request: kserve_pb2.ModelInferRequest,
    dtypes: Mapping[str, Collection[DTypeLike]] | None = None,
) -> dict[str, np.ndarray]:
    """Every input of a KServe ModelInferRequest by name, from raw_input_contents or typed contents.

    `dtypes` maps an input name to its allowed dtypes; inputs it does not name are not checked here.
    """
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise InvalidInput(
            f"raw_input_contents: {len(raw)} entries; "
            f"expected one per input ({len(request.inputs)}), in order"
        )
    arrays: dict[str, np.ndarray] = {}
    for i, tensor in enumerate(request.inputs):
        field = f"inputs[{i}] ({tensor.name})"
        if not tensor.name:
            raise InvalidInput(f"inputs[{i}]: empty name; expected the input's name, e.g. 'images'")
        if tensor.name in arrays:
            raise InvalidInput(f"{field}: input {tensor.name!r} given twice; expected each input once")
        dtype, content_field = _kserve_dtype(field, tensor.datatype, (dtypes or {}).get(tensor.name))
        shape = tuple(int(d) for d in tensor.shape)
        _check_shape(field, shape, None)
        if raw:
            if any(len(getattr(tensor.contents, f)) for f in _CONTENT_FIELDS):
                raise InvalidInput(
                    f"{field}: has typed contents while the request uses raw_input_contents; "
                    "expected one or the other"
                )
            arrays[tensor.name] = _from_bytes(
                f"raw_input_contents[{i}] ({tensor.name})", raw[i], dtype, shape
            )
        else:
            arrays[tensor.name] = _typed_contents(field, tensor, dtype, content_field, shape)
    return arrays


def set_kserve_outputs(response: kserve_pb2.ModelInferResponse, outputs: Mapping[str, Any]) -> None:
    """Append `outputs` (name -> array) to a ModelInferResponse as raw_output_contents, in order."""
    for name, value in outputs.items():
        array = np.asarray(value)
        datatype = kserve_datatype(array.dtype)
        response.outputs.add(name=name, datatype=datatype, shape=array.shape)
        response.raw_output_contents.append(_le_bytes(array, _KSERVE[datatype][0]))
