"""What the model sees of the user's data (fedmoe.experiment.prepare): CSV features
standardised per feature with train-split statistics, images with one mean and std as
before, token ids kept as int64 through the engine's cohorts; and ``fedmoe data info``
on the user's files."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from userfiles import write_agnews, write_csv, write_images

from fedmoe.cli import main
from fedmoe.data import clear_cache, load_dataset
from fedmoe.engine import ClientData
from fedmoe.experiment import config
from fedmoe.experiment.prepare import input_stats, prepare, read_options, to_tensor


@pytest.fixture(autouse=True)
def _fresh_cache() -> Iterator[None]:
    clear_cache()
    yield
    clear_cache()


def _features_csv(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    rows = []
    for i in range(50):
        # Features on very different scales, and one constant feature.
        rows.append([rng.normal(1000.0, 300.0), rng.normal(0.0, 1e-3), 7.0, i % 2])
    return write_csv(tmp_path / "t.csv", ["big", "tiny", "constant", "label"], rows)


def test_csv_features_are_standardised_per_feature(tmp_path: Path) -> None:
    path = _features_csv(tmp_path)
    cfg = config.from_dict(
        {"dataset": f"csv:{path}", "model": "mlp", "dtype": "float64", "partition": _iid(2)}
    )
    prep = prepare(cfg)
    ds = prep.dataset
    mean, std = input_stats(ds)
    assert isinstance(mean, np.ndarray) and isinstance(std, np.ndarray)
    np.testing.assert_allclose(mean, ds.x_train.astype(np.float64).mean(axis=0))
    expected_std = ds.x_train.astype(np.float64).std(axis=0)
    np.testing.assert_allclose(std[:2], expected_std[:2])
    assert std[2] == 1.0  # a constant feature is centred, not divided by 0
    x_train = prep.train.x.numpy()
    np.testing.assert_allclose(x_train.mean(axis=0), [0.0, 0.0, 0.0], atol=1e-9)
    np.testing.assert_allclose(x_train.std(axis=0), [1.0, 1.0, 0.0], atol=1e-9)
    # The test split is standardised with the train split's statistics.
    np.testing.assert_allclose(
        prep.test.x.numpy(), (ds.x_test.astype(np.float64) - mean) / std, rtol=1e-12
    )


def _iid(clients: int) -> dict[str, Any]:
    return {"scheme": "iid", "clients": clients, "train": 5, "val": 5, "test": 3}


def test_images_keep_one_mean_and_std(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    images = {c: [rng.integers(0, 256, (16, 16), dtype=np.uint8) for _ in range(12)] for c in "ab"}
    write_images(tmp_path / "img", images)
    ds = load_dataset(f"images:{tmp_path / 'img'}")
    mean, std = input_stats(ds)
    assert isinstance(mean, float) and isinstance(std, float)
    assert mean == float(ds.x_train.mean()) / 255.0 and std == float(ds.x_train.std()) / 255.0
    x = to_tensor(ds.x_test, mean, std, torch.float64, torch.device("cpu"))
    expected = (torch.tensor(ds.x_test, dtype=torch.float64) / 255.0 - mean) / std
    assert torch.equal(x, expected)


def test_token_ids_stay_int64_through_the_cohorts(tmp_path: Path) -> None:
    rows = [(1 + i % 2, f"title {i}", "words " * (i % 7) + f"w{i % 5}") for i in range(20)]
    write_agnews(tmp_path, rows[:16], rows[16:])
    cfg = config.from_dict(
        {
            "dataset": f"agnews:{tmp_path}",
            "model": "mlp",
            "data": {"max_length": 6},
            "partition": _iid(1),
        }
    )
    ds = load_dataset(cfg.dataset, options=read_options(cfg))
    assert ds.x_train.dtype == np.int64 and ds.input_shape == (6,)
    assert input_stats(ds) == (0.0, 1.0)
    x = to_tensor(ds.x_train, 0.0, 1.0, torch.float32, torch.device("cpu"))
    assert x.dtype == torch.int64 and torch.equal(x, torch.from_numpy(ds.x_train.copy()))
    prep = prepare(cfg)
    assert prep.train.x.dtype == torch.int64 and prep.global_test.x.dtype == torch.int64
    # The engine's cohorts gather int64 rows as they are.
    cohort = ClientData.from_indices(x, torch.from_numpy(ds.y_train.copy()), [np.array([3, 1])])
    batch, labels, valid = cohort.batch(torch.tensor([[1, 0, 2]]))
    assert batch.dtype == torch.int64 and batch.shape == (1, 3, 6)
    assert torch.equal(batch[0, :2], x[[1, 3]]) and valid.tolist() == [[True, True, False]]
    assert labels[0, :2].tolist() == ds.y_train[[1, 3]].tolist()


# --------------------------------------------------------------------------------------
# fedmoe data info
# --------------------------------------------------------------------------------------


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out = capsys.readouterr()
    return code, out.out, out.err


def test_data_info_on_your_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = [[i, i % 3, f"h{i % 4}"] for i in range(40)]
    path = write_csv(tmp_path / "t.csv", ["a", "label", "site"], rows)
    code, out, err = _cli(capsys, "data", "info", f"csv:{path}", "--set", "data.client=site")
    assert code == 0 and err == "", err
    assert "4 clients (train/test): h0 8/2, h1 8/2" in out and "csv:" in out
    code, out, _ = _cli(
        capsys, "data", "info", f"csv:{path}", "--json", "--set", "data.client=site"
    )
    info = json.loads(out)
    assert info["format"] == "csv" and info["options"]["client"] == "site"
    assert info["shapes"]["x_train"] == [32, 1] and info["num_classes"] == 3
    write_agnews(tmp_path / "ag", [(1, "a b", "c")], [(1, "b", "d")])
    code, out, _ = _cli(capsys, "data", "info", f"agnews:{tmp_path / 'ag'}")
    assert code == 0 and "vocabulary: 5 tokens" in out
    # Errors: one line each, status 1.
    for args, part in (
        ((f"csv:{path}",), "line 2 column 'site': 'h0' is not a number"),
        ((f"csv:{path}", "--set", "partition.clients=3"), "--set takes data.key=value"),
        ((f"csv:{path}", "--set", "data.test_fraction=2"), "data.test_fraction must be in"),
        (("nope:x",), "unknown data format 'nope'"),
    ):
        code, out, err = _cli(capsys, "data", "info", *args)
        assert code == 1 and out == "" and len(err.splitlines()) == 1 and part in err, err
