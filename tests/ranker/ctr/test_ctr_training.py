"""Training (a few epochs on the synthetic log), model directories (save/load round trip,
versions) and the per-seed results record."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from core.errors import Conflict, ModelNotAvailable
from ranker.ctr import (
    CTRData,
    SampleOptions,
    TrainOptions,
    build_samples,
    load_model,
    make_config,
    read_model_config,
    save_model,
    train_model,
    train_seeds,
)
from ranker.ctr.persistence import WEIGHTS_FILE
from ranker.ctr.registry import build_module
from tests.ranker.ctr.conftest import N_CATEGORIES, N_ITEMS, synthetic_log

SMALL = {"embed_dim": 8, "mlp": (16,), "din_hidden": (8,), "hashes": 8, "hash_bits": 2, "top_k": 5}
FAST = TrainOptions(epochs=3, batch_size=64, lr=1e-2, device="cpu", progress=False)


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data() -> CTRData:
    return build_samples(synthetic_log(n=2400, seed=1), SampleOptions(max_history=60))


@pytest.mark.parametrize("kind", ["sdim", "dare"])
def test_training_learns_the_users_taste_and_saves_a_loadable_model(
    data: CTRData, tmp_path: Path, kind: str
) -> None:
    config = make_config(kind, n_items=N_ITEMS, n_categories=N_CATEGORIES + 1, options=SMALL)
    result = train_model(data, config, FAST, tmp_path / kind, seed=3)
    assert 1 <= result.best_epoch <= 3 and len(result.epochs) >= result.best_epoch
    assert result.test["auc"] > 0.75, result.test  # history says which category a user likes
    assert not (tmp_path / kind / "checkpoints").exists()
    model = load_model(tmp_path / kind)
    assert model.kind == kind and model.version == result.version
    meta = read_model_config(tmp_path / kind)["metadata"]
    assert meta["sample_options"]["history"] == "positive" and meta["best_epoch"] >= 1
    # The served model scores a test sample as the trainer predicted it.
    test = data.part("test")
    i = int(np.flatnonzero(test.history_length > 0)[0])
    state = model.encode(data.behaviours[test.hist_start[i] : test.hist_end[i]])
    prob = model.score(state, np.array([test.item[i]]))[0]
    assert prob == pytest.approx(result.test_probs[i], abs=1e-5)
    with pytest.raises(Conflict, match="--resume"):
        train_model(data, config, FAST, tmp_path / kind, seed=3)


def test_save_load_round_trip_and_the_version_follows_the_weights(
    data: CTRData, tmp_path: Path
) -> None:
    config = make_config("twin", n_items=N_ITEMS, n_categories=N_CATEGORIES + 1, options=SMALL)
    module = build_module(config, data.catalogue.categories)
    version = save_model(module, data.catalogue, tmp_path / "m")
    model = load_model(tmp_path / "m", name="twin-test")
    assert (model.name, model.kind, model.version) == ("twin-test", "twin", version)
    assert model.catalogue.item_ids == data.catalogue.item_ids
    history, cands = np.array([1, 2, 3, 9]), np.arange(N_ITEMS)
    again = load_model(tmp_path / "m")
    np.testing.assert_array_equal(
        model.score(model.encode(history), cands), again.score(again.encode(history), cands)
    )
    with torch.no_grad():
        module.head.mlp[0].bias.add_(0.1)
    assert save_model(module, data.catalogue, tmp_path / "m2") != version
    assert save_model(build_module(config), data.catalogue, tmp_path / "m3") != version
    with pytest.raises(ModelNotAvailable, match="quarry train ctr"):
        load_model(tmp_path / "nothing")
    (tmp_path / "m" / WEIGHTS_FILE).unlink()
    with pytest.raises(ModelNotAvailable):
        load_model(tmp_path / "m")


def test_seeds_give_one_model_each_and_a_results_record(data: CTRData, tmp_path: Path) -> None:
    options = TrainOptions(epochs=1, batch_size=128, device="cpu", progress=False)
    record = train_seeds(
        data, "din-short", tmp_path, seeds=[1, 2], model_options=SMALL, options=options
    )
    assert [s["seed"] for s in record["seeds"]] == [1, 2]
    for s in record["seeds"]:
        assert load_model(s["model_dir"]).config.max_history == 50
        assert len(s["test_predictions"]) == len(record["test_samples"]["labels"])
    assert set(record["summary"]["test"]) == {"auc", "gauc", "logloss"}
    assert record["summary"]["test"]["auc"]["n"] == 2
    assert record["data"]["test_fingerprint"] == data.fingerprint("test")
    json.dumps(record)  # plain JSON types
    # A model never keeps more history than its data had.
    assert load_model(tmp_path / "seed-1").config.max_history == 50
    capped = train_seeds(
        data, "sdim", tmp_path / "s", seeds=[0], model_options=SMALL, options=options
    )
    assert capped["config"]["max_history"] == 60


def test_an_interrupted_run_resumes_from_its_checkpoint(
    data: CTRData, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ranker.ctr.trainer as trainer

    config = make_config("sdim", n_items=N_ITEMS, n_categories=N_CATEGORIES + 1, options=SMALL)
    options = TrainOptions(epochs=2, batch_size=128, device="cpu", progress=False)
    whole = train_model(data, config, options, tmp_path / "whole", seed=5)

    def crash(*args: object, **kwargs: object) -> str:
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer, "save_model", crash)
    with pytest.raises(KeyboardInterrupt):
        train_model(data, config, options, tmp_path / "cut", seed=5)
    assert (tmp_path / "cut" / "checkpoints" / "last.pt").is_file()
    monkeypatch.undo()
    resumed = train_model(data, config, options, tmp_path / "cut", seed=5, resume=True)
    assert resumed.best_epoch == whole.best_epoch and resumed.version == whole.version
    np.testing.assert_allclose(resumed.test_probs, whole.test_probs, atol=1e-6)
    # A finished seed is kept by a resumed multi-seed run.
    first = train_seeds(
        data, "sdim", tmp_path / "seeds", seeds=[1], model_options=SMALL, options=options
    )
    again = train_seeds(
        data,
        "sdim",
        tmp_path / "seeds",
        seeds=[1],
        model_options=SMALL,
        options=options,
        resume=True,
    )
    assert again["seeds"][0]["version"] == first["seeds"][0]["version"]
    assert again["seeds"][0]["test"] == first["seeds"][0]["test"]
