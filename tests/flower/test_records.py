"""Models on the wire: round trip, and every kind of bad update is rejected with a reason."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

pytest.importorskip("flwr")

from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from fedmoe.flower.records import (
    UpdateRejected,
    count_arrays,
    models_from_content,
    models_to_records,
    number,
    params_from_record,
    params_to_record,
)
from fedmoe.models import Params


def model(dtype: torch.dtype = torch.float32) -> Params:
    gen = torch.Generator().manual_seed(0)
    return {
        "fc1.weight": torch.randn(1, 4, 3, generator=gen).to(dtype),
        "fc1.bias": torch.randn(1, 4, generator=gen).to(dtype),
    }


def test_round_trip_is_exact_and_strips_the_client_axis() -> None:
    params = model()
    record = params_to_record(params)
    assert record["fc1.weight"].shape == (4, 3)
    back = params_from_record(record, params)
    for name, tensor in params.items():
        assert back[name].dtype == tensor.dtype
        assert torch.equal(back[name], tensor)


def test_a_model_without_a_client_axis_of_one_is_not_sent() -> None:
    with pytest.raises(ValueError, match="client axis"):
        params_to_record({"w": torch.zeros(2, 3)})


def _arrays(params: Params) -> dict[str, np.ndarray]:
    return {n: t[0].numpy().copy() for n, t in params.items()}


def _record(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({n: Array(a) for n, a in arrays.items()})


def test_missing_key_is_rejected() -> None:
    arrays = _arrays(model())
    del arrays["fc1.bias"]
    with pytest.raises(UpdateRejected, match=r"missing keys fc1\.bias"):
        params_from_record(_record(arrays), model())


def test_unexpected_key_is_rejected() -> None:
    arrays = _arrays(model()) | {"backdoor": np.zeros(3, dtype=np.float32)}
    with pytest.raises(UpdateRejected, match="unexpected keys backdoor"):
        params_from_record(_record(arrays), model())


def test_wrong_shape_is_rejected() -> None:
    arrays = _arrays(model())
    arrays["fc1.weight"] = np.zeros((3, 4), dtype=np.float32)
    with pytest.raises(UpdateRejected, match=r"fc1\.weight: shape \(3, 4\), expected \(4, 3\)"):
        params_from_record(_record(arrays), model())


@pytest.mark.parametrize("dtype", [np.float64, np.float16, np.int32])
def test_wrong_dtype_is_rejected(dtype: type) -> None:
    arrays = _arrays(model())
    arrays["fc1.bias"] = arrays["fc1.bias"].astype(dtype)
    with pytest.raises(UpdateRejected, match=r"fc1\.bias: dtype"):
        params_from_record(_record(arrays), model())


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values_are_rejected(bad: float) -> None:
    arrays = _arrays(model())
    arrays["fc1.weight"][2, 1] = bad
    with pytest.raises(UpdateRejected, match=r"fc1\.weight: 1 non-finite value"):
        params_from_record(_record(arrays), model())


def test_declared_metadata_must_match_the_payload() -> None:
    arrays = _arrays(model())
    buf = io.BytesIO()
    np.save(buf, arrays["fc1.bias"], allow_pickle=False)
    record = _record(arrays)
    record["fc1.bias"] = Array("float32", (2, 2), "numpy.ndarray", buf.getvalue())
    with pytest.raises(UpdateRejected, match=r"declared float32 \(2, 2\) but holds"):
        params_from_record(record, model())


def test_undecodable_payloads_are_rejected() -> None:
    record = _record(_arrays(model()))
    record["fc1.bias"] = Array("float32", (4,), "numpy.ndarray", b"not a numpy file")
    with pytest.raises(UpdateRejected, match="cannot decode"):
        params_from_record(record, model())
    record["fc1.bias"] = Array("float32", (4,), "pickle", b"\x80\x04")
    with pytest.raises(UpdateRejected, match="cannot decode"):
        params_from_record(record, model())


def test_pickled_object_arrays_are_not_loaded() -> None:
    buf = io.BytesIO()
    np.save(buf, np.array([object()] * 4, dtype=object), allow_pickle=True)
    record = _record(_arrays(model()))
    record["fc1.bias"] = Array("object", (4,), "numpy.ndarray", buf.getvalue())
    with pytest.raises(UpdateRejected, match="cannot decode"):
        params_from_record(record, model())


def test_float64_models_validate_against_float64_references() -> None:
    params = model(torch.float64)
    assert params_from_record(params_to_record(params), params)["fc1.bias"].dtype == torch.float64
    with pytest.raises(UpdateRejected, match="dtype float64, expected float32"):
        params_from_record(params_to_record(params), model())


def test_counting_arrays_in_a_message() -> None:
    content = RecordDict(
        {
            "update": params_to_record(model()),
            "metrics": MetricRecord({"num-examples": 3}),
            "cfg": ConfigRecord({"x": 1}),
        }
    )
    arrays, nbytes = count_arrays(content)
    assert arrays == 2 and nbytes > 4 * (12 + 4)
    assert count_arrays(RecordDict({"metrics": MetricRecord({"a": 1.0})})) == (0, 0)


def test_number_accepts_only_numbers() -> None:
    assert number(3, "n") == 3.0
    for bad in (True, "3", [1, 2], None):
        with pytest.raises(ValueError, match="'n' must be a number"):
            number(bad, "n")


def test_several_models_round_trip_and_a_wrong_set_is_rejected() -> None:
    one = model()
    three = {name: torch.cat([p, p + 1, p + 2]) for name, p in one.items()}
    records = models_to_records(three, "clusters")
    assert sorted(records) == ["clusters.0", "clusters.1", "clusters.2"]
    back = models_from_content(RecordDict(dict(records)), "clusters", 3, one)
    assert back is not None
    for name, tensor in three.items():
        assert torch.equal(back[name], tensor)
    assert (
        models_from_content(RecordDict({"global": records["clusters.0"]}), "clusters", 3, one)
        is None
    )
    with pytest.raises(UpdateRejected, match=r"expected the 2 models clusters\.0, clusters\.1"):
        models_from_content(RecordDict(dict(records)), "clusters", 2, one)
    del records["clusters.1"]
    with pytest.raises(UpdateRejected, match=r"got clusters\.0, clusters\.2"):
        models_from_content(RecordDict(dict(records)), "clusters", 3, one)
