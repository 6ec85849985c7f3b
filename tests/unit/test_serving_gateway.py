"""The gateway's scoring step on a real model and a real state store, without a server."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from fraudguard.model import FraudMLP, ModelBundle, Standardizer
from fraudguard.serving.app import Gateway, _Refused
from fraudguard.serving.champion import ServedModel
from fraudguard.serving.predictions import PredictionLog
from fraudguard.serving.state import FeatureStore, RawTransaction


def _gateway(tmp_path: Path, settings, weight: float) -> Gateway:
    features = list(settings.model.features)
    module = FraudMLP(len(features), (4,), 0.0).eval()
    with torch.no_grad():
        module.net[0].weight.fill_(weight)  # NaN: a broken model that returns no usable score
    bundle = ModelBundle(module, Standardizer(features, np.zeros(len(features)), np.ones(len(features))), (4,), 0.0,
                         threshold=0.5)
    gateway = Gateway(settings, tmp_path, client=None, verifier=None, api_clients=[])
    gateway.store = FeatureStore(tmp_path / "state.sqlite", settings.featurize)
    gateway.log = PredictionLog(tmp_path / "predictions.jsonl", max_queue=100)
    gateway.follower.current = ServedModel(bundle, 1, "0" * 64, "now", tmp_path / "model")
    return gateway


def test_a_score_the_model_cannot_give_records_nothing_so_the_retry_is_scored(tmp_path, small_settings):
    broken = _gateway(tmp_path / "broken", small_settings, float("nan"))
    tx = RawTransaction(1, dt.datetime(2024, 7, 29, 13, 45), 5, 7, 50.0)
    with pytest.raises(_Refused) as refused:
        broken.score([tx], "bank", "r1", time.perf_counter())
    assert refused.value.status == 500 and "nothing was decided or recorded" in refused.value.message
    assert broken.store.count() == 0  # before: 1, so the retry below was a 409 "already scored"
    broken.follower.current = _gateway(tmp_path / "fixed", small_settings, 0.01).follower.current
    done = broken.score([tx], "bank", "r2", time.perf_counter())
    assert done.results[0]["TRANSACTION_ID"] == 1 and broken.store.count() == 1
    broken.log.close()


def test_explanations_that_fail_leave_the_recorded_decisions_returned_with_the_reason(tmp_path, small_settings):
    gateway = _gateway(tmp_path, small_settings, 0.01)
    first = gateway.score([RawTransaction(1, dt.datetime(2024, 7, 29, 13, 45), 5, 7, 50.0)], "bank", "r1",
                          time.perf_counter())
    asyncio.run(gateway.explain_or_say_why(first))
    explained = first.results[0]
    assert explained["explanation"]["method"] and "explanation_error" not in explained
    assert set(explained["explanation"]["attributions"]) == set(small_settings.model.features)

    gateway.explain_pool().shutdown(wait=True)  # what a replica that is stopping has: no thread to explain on
    done = gateway.score([RawTransaction(2, dt.datetime(2024, 7, 29, 13, 46), 5, 7, 60.0)], "bank", "r2",
                         time.perf_counter())
    asyncio.run(gateway.explain_or_say_why(done))
    result = done.results[0]
    assert result["TRANSACTION_ID"] == 2 and isinstance(result["is_fraud"], bool)  # the decision stands
    assert result["explanation"] is None and result["explanation_error"].startswith("RuntimeError: ")
    assert gateway.store.count() == 2  # and stays recorded
    gateway.log.close()
