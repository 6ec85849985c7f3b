"""Library functions take their own params section (issue 14 §6), as the stages do (test_stages.py): a function
that reads one or two sections of params.yaml names them in its signature, so it cannot read another.

Functions that legitimately read the whole effective configuration keep `Settings` (docs/architecture.md,
"Conventions"): lineage.params_sha256 and what hashes or logs through it, and the gate context and gateway,
which read many sections."""

from __future__ import annotations

import inspect
import typing
from typing import Any, Callable

import pandas as pd
import pytest
from mlflow import MlflowClient

from fraudguard import config, promotion, tracking
from fraudguard.config import (
    DataRemoteSettings,
    GatesSettings,
    RegistrySettings,
    Settings,
    SimulateSettings,
)
from fraudguard.data import versioning
from fraudguard.model import ModelBundle
from fraudguard.redteam import suite

# function -> the params sections it takes, by parameter name.
SECTION_PARAMETERS: dict[Callable[..., Any], dict[str, type]] = {
    tracking.configure_mlflow: {"registry": RegistrySettings},
    tracking._register_model: {"registry": RegistrySettings},
    promotion.discover_gates: {"gates": GatesSettings},
    promotion.load_gate_libraries: {"gates": GatesSettings},
    versioning.pull_data: {"remote": DataRemoteSettings, "simulate": SimulateSettings},
    suite.load_target: {"registry": RegistrySettings},
}

# Names the modules import only for type checking (TYPE_CHECKING blocks), so that the hints resolve here.
TYPE_CHECKING_NAMES = {**vars(config), "MlflowClient": MlflowClient, "pd": pd, "ModelBundle": ModelBundle}


def resolved_hints(fn: Callable[..., Any]) -> dict[str, Any]:
    return typing.get_type_hints(fn, globalns={**fn.__globals__, **TYPE_CHECKING_NAMES})


def mentions(hint: Any, wanted: type) -> bool:
    """Whether `wanted` is the hint or inside it (X | None, Optional[X], Mapping[str, X]...)."""
    return hint is wanted or any(mentions(arg, wanted) for arg in typing.get_args(hint))


def section_types_of_settings() -> set[type]:
    return {field.annotation for field in Settings.model_fields.values() if isinstance(field.annotation, type)}


@pytest.mark.parametrize("fn", SECTION_PARAMETERS, ids=lambda fn: f"{fn.__module__}.{fn.__name__}")
def test_function_takes_its_params_sections_and_not_the_whole_settings(fn):
    hints = resolved_hints(fn)
    parameters = inspect.signature(fn).parameters
    unannotated = [name for name in parameters if name not in hints]
    assert not unannotated, f"{fn.__name__}: parameters without a type: {unannotated}"
    takes_settings = [name for name, hint in hints.items() if name != "return" and mentions(hint, Settings)]
    assert not takes_settings, f"{fn.__name__} takes the whole Settings in {takes_settings}"
    for name, section_type in SECTION_PARAMETERS[fn].items():
        assert hints[name] is section_type, f"{fn.__name__}({name}): {hints[name]!r}, expected {section_type!r}"


def test_every_section_taken_is_a_section_of_params_yaml():
    taken = {section for sections in SECTION_PARAMETERS.values() for section in sections.values()}
    assert taken <= section_types_of_settings()


def test_discover_gates_finds_one_gate_per_gates_section_key(small_settings):
    gates = promotion.discover_gates(small_settings.gates)
    assert list(gates) == list(GatesSettings.model_fields)
    assert all(callable(run) for run in gates.values())
