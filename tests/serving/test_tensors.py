"""Arrays on the wire: round trips and the checks that name the field and what was expected."""

from __future__ import annotations

import numpy as np
import pytest

from serving.tensors import (
    FLOAT_DTYPES,
    IMAGE_DTYPES,
    KSERVE_DATATYPES,
    from_kserve_inputs,
    from_tensor,
    kserve_datatype,
    optional_tensor,
    set_kserve_outputs,
    to_tensor,
)
from twin._proto.inference import grpc_predict_v2_pb2 as kserve_pb2
from twin._proto.twin.v1 import twin_pb2
from twin.errors import InvalidInput

RNG = np.random.default_rng(0)


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "int32", "int64", "float16", "float32", "float64"])
def test_twin_tensor_round_trip(dtype):
    array = (RNG.random((3, 1, 4, 5)) * 100).astype(dtype)
    tensor = twin_pb2.Tensor.FromString(to_tensor(array).SerializeToString())
    back = from_tensor(tensor, "images")
    assert back.dtype == array.dtype and back.shape == array.shape
    np.testing.assert_array_equal(back, array)


def test_twin_tensor_is_little_endian_row_major():
    array = np.arange(6, dtype=">f4").reshape(2, 3).T  # big-endian, not C-contiguous
    tensor = to_tensor(array)
    assert list(tensor.shape) == [3, 2] and tensor.dtype == twin_pb2.DATA_TYPE_FLOAT32
    assert tensor.data == np.ascontiguousarray(array, dtype="<f4").tobytes()
    np.testing.assert_array_equal(from_tensor(tensor, "x"), array)


def test_twin_tensor_scalar_and_empty():
    np.testing.assert_array_equal(from_tensor(to_tensor(np.float32(2.5)), "x"), np.float32(2.5))
    assert from_tensor(to_tensor(np.zeros((0, 7), np.float32)), "x").shape == (0, 7)


def test_twin_tensor_byte_length_must_match_shape():
    tensor = twin_pb2.Tensor(shape=[2, 3], dtype=twin_pb2.DATA_TYPE_FLOAT32, data=b"\0" * 20)
    with pytest.raises(InvalidInput, match=r"images: 20 bytes; expected 24 for shape \[2, 3\] of float32"):
        from_tensor(tensor, "images")


def test_twin_tensor_dtype_checks():
    images = to_tensor(np.zeros((2, 1, 3, 3), np.int64))
    with pytest.raises(InvalidInput, match=r"images: dtype DATA_TYPE_INT64; expected one of \['float16'"):
        from_tensor(images, "images", dtypes=IMAGE_DTYPES)
    unset = twin_pb2.Tensor(shape=[1], data=b"\0")
    with pytest.raises(InvalidInput, match="behavior: dtype DATA_TYPE_UNSPECIFIED; expected one of"):
        from_tensor(unset, "behavior", dtypes=FLOAT_DTYPES)
    unknown = twin_pb2.Tensor(shape=[1], dtype=99, data=b"\0")
    with pytest.raises(InvalidInput, match="x: dtype 99; expected one of"):
        from_tensor(unknown, "x")
    with pytest.raises(InvalidInput, match=r"mask: dtype bool; expected one of"):
        to_tensor(np.zeros(3, bool), "mask")


def test_twin_tensor_shape_checks():
    behavior = to_tensor(np.zeros((4, 3, 1), np.float32))
    with pytest.raises(InvalidInput, match=r"behavior: shape \[4, 3, 1\] \(3-D\); expected 2-D"):
        from_tensor(behavior, "behavior", ndim=2)
    images = to_tensor(np.zeros((4, 3), np.uint8))
    with pytest.raises(InvalidInput, match=r"images: shape \[4, 3\] \(2-D\); expected 3-D or 4-D"):
        from_tensor(images, "images", ndim=(3, 4))
    negative = twin_pb2.Tensor(shape=[-1, 3], dtype=twin_pb2.DATA_TYPE_UINT8)
    with pytest.raises(InvalidInput, match="negative dimension"):
        from_tensor(negative, "images")


def test_optional_tensor_is_none_when_unset():
    request = twin_pb2.PredictRequest(images=to_tensor(np.zeros((2, 4, 4), np.uint8)))
    assert optional_tensor(request, "behavior", dtypes=FLOAT_DTYPES, ndim=2) is None
    assert optional_tensor(request, "images", dtypes=IMAGE_DTYPES).shape == (2, 4, 4)


# ---------------------------------------------------------------------------------------------------
# KServe v2


def _raw_request(**arrays):
    request = kserve_pb2.ModelInferRequest(model_name="m")
    for name, array in arrays.items():
        request.inputs.add(name=name, datatype=kserve_datatype(array.dtype), shape=array.shape)
        request.raw_input_contents.append(array.astype(array.dtype.newbyteorder("<")).tobytes())
    return request


def test_kserve_datatype_names():
    assert kserve_datatype(np.float32) == "FP32"
    assert kserve_datatype(np.dtype(">f8")) == "FP64"
    assert kserve_datatype(np.uint8) == "UINT8"
    assert kserve_datatype(np.int64) == "INT64"
    assert kserve_datatype(np.bool_) == "BOOL"
    assert set(KSERVE_DATATYPES) >= {"FP16", "FP32", "FP64", "UINT8", "INT64"}
    with pytest.raises(InvalidInput, match="dtype: complex64"):
        kserve_datatype(np.complex64)


def test_kserve_raw_inputs_round_trip():
    images = RNG.integers(0, 256, (2, 1, 3, 4)).astype(np.uint8)
    behavior = RNG.normal(size=(2, 3)).astype(np.float32)
    request = kserve_pb2.ModelInferRequest.FromString(
        _raw_request(images=images, behavior=behavior).SerializeToString()
    )
    arrays = from_kserve_inputs(request, {"images": IMAGE_DTYPES, "behavior": FLOAT_DTYPES})
    assert list(arrays) == ["images", "behavior"]
    np.testing.assert_array_equal(arrays["images"], images)
    np.testing.assert_array_equal(arrays["behavior"], behavior)


def test_kserve_typed_contents():
    request = kserve_pb2.ModelInferRequest(model_name="m")
    tensor = request.inputs.add(name="behavior", datatype="FP32", shape=[2, 3])
    tensor.contents.fp32_contents.extend([0.5, 1, 2, 3, 4, 5])
    ids = request.inputs.add(name="ids", datatype="INT64", shape=[2])
    ids.contents.int64_contents.extend([7, -8])
    arrays = from_kserve_inputs(request)
    assert arrays["behavior"].dtype == np.float32
    np.testing.assert_array_equal(arrays["behavior"], [[0.5, 1, 2], [3, 4, 5]])
    np.testing.assert_array_equal(arrays["ids"], [7, -8])


def test_kserve_input_errors():
    images = np.zeros((2, 4), np.uint8)
    request = _raw_request(images=images)
    request.raw_input_contents[0] = b"\0" * 7
    with pytest.raises(InvalidInput, match=r"raw_input_contents\[0\] \(images\): 7 bytes; expected 8"):
        from_kserve_inputs(request)

    request = _raw_request(images=images, behavior=np.zeros((2, 3), np.float32))
    del request.raw_input_contents[1]
    with pytest.raises(InvalidInput, match=r"raw_input_contents: 1 entries; expected one per input \(2\)"):
        from_kserve_inputs(request)

    request = _raw_request(images=images.astype(np.float64))
    with pytest.raises(
        InvalidInput, match=r"inputs\[0\] \(images\): datatype 'FP64'; expected one of \['UINT8'\]"
    ):
        from_kserve_inputs(request, {"images": [np.uint8]})

    request = _raw_request(images=images)
    request.inputs[0].datatype = "BYTES"
    with pytest.raises(InvalidInput, match="datatype 'BYTES'; expected one of"):
        from_kserve_inputs(request)

    request = _raw_request(images=images, again=images)
    request.inputs[1].name = "images"
    with pytest.raises(InvalidInput, match="given twice"):
        from_kserve_inputs(request)

    request = _raw_request(images=images)
    request.inputs[0].contents.uint_contents.append(1)
    with pytest.raises(InvalidInput, match="typed contents while the request uses raw_input_contents"):
        from_kserve_inputs(request)


def test_kserve_typed_contents_errors():
    request = kserve_pb2.ModelInferRequest()
    tensor = request.inputs.add(name="images", datatype="UINT8", shape=[3])
    tensor.contents.uint_contents.extend([1, 2, 300])
    with pytest.raises(InvalidInput, match=r"values from 1 to 300; expected UINT8 values in \[0, 255\]"):
        from_kserve_inputs(request)
    tensor.contents.uint_contents[2] = 3
    tensor.shape[0] = 4
    with pytest.raises(InvalidInput, match=r"3 values in contents.uint_contents; expected 4 for shape \[4\]"):
        from_kserve_inputs(request)
    half = kserve_pb2.ModelInferRequest()
    half.inputs.add(name="x", datatype="FP16", shape=[1]).contents.fp32_contents.append(1.0)
    with pytest.raises(InvalidInput, match="FP16 has no typed contents; send it in raw_input_contents"):
        from_kserve_inputs(half)
    wrong = kserve_pb2.ModelInferRequest()
    wrong.inputs.add(name="x", datatype="FP32", shape=[1]).contents.fp64_contents.append(1.0)
    with pytest.raises(
        InvalidInput, match=r"contents in \['fp64_contents'\]; expected only contents.fp32_contents"
    ):
        from_kserve_inputs(wrong)


def test_kserve_outputs_are_raw_bytes():
    mean = RNG.random((2, 5)).astype(np.float32)
    members = RNG.random((3, 2, 5))  # float64
    response = kserve_pb2.ModelInferResponse(model_name="m", model_version="1")
    set_kserve_outputs(response, {"mean": mean, "members": members})
    response = kserve_pb2.ModelInferResponse.FromString(response.SerializeToString())
    assert [(o.name, o.datatype, list(o.shape)) for o in response.outputs] == [
        ("mean", "FP32", [2, 5]),
        ("members", "FP64", [3, 2, 5]),
    ]
    assert not response.outputs[0].HasField("contents")
    np.testing.assert_array_equal(np.frombuffer(response.raw_output_contents[0], "<f4").reshape(2, 5), mean)
    np.testing.assert_array_equal(
        np.frombuffer(response.raw_output_contents[1], "<f8").reshape(3, 2, 5), members
    )
