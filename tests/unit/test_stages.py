"""The stage shape: each DVC stage declares the params it reads, dvc.yaml declares the same, and its code can
read no others (run gets only its section)."""

from __future__ import annotations

import ast
import dataclasses
import importlib
import inspect
import typing

import pytest
import yaml

from fraudguard.config import Settings, section_keys, settings_value
from fraudguard.stages import STAGE_NAMES

from conftest import PROJECT_ROOT

DVC_STAGES = yaml.safe_load((PROJECT_ROOT / "dvc.yaml").read_text(encoding="utf-8"))["stages"]


def stage_module(name: str):
    return importlib.import_module(f"fraudguard.stages.{name}")


def test_every_dvc_stage_is_a_stage_module_and_runs_it():
    assert set(DVC_STAGES) == set(STAGE_NAMES)
    for name in STAGE_NAMES:
        assert DVC_STAGES[name]["cmd"] == f"python -m fraudguard.stages.{name}"


@pytest.mark.parametrize("name", STAGE_NAMES)
def test_dvc_yaml_declares_exactly_the_params_the_stage_reads(name):
    declared = DVC_STAGES[name].get("params", [])
    assert sorted(declared) == sorted(stage_module(name).PARAMS), (
        f"dvc.yaml stage {name} params {declared} differ from what fraudguard.stages.{name} reads "
        f"{list(stage_module(name).PARAMS)}")


@pytest.mark.parametrize("name", STAGE_NAMES)
def test_the_section_a_stage_runs_on_holds_its_declared_params_and_nothing_else(name, small_settings):
    module = stage_module(name)
    section = module.section_of(small_settings)
    if dataclasses.is_dataclass(section):
        assert section_keys(type(section)) == tuple(module.PARAMS)
        for field, key in zip(dataclasses.fields(section), module.PARAMS):
            assert getattr(section, field.name) == settings_value(small_settings, key), key
    else:
        (key,) = module.PARAMS
        assert section is settings_value(small_settings, key)


@pytest.mark.parametrize("name", STAGE_NAMES)
def test_run_takes_the_paths_and_the_section_only(name):
    module = stage_module(name)
    hints = typing.get_type_hints(module.run)
    assert list(inspect.signature(module.run).parameters)[:2] == ["paths", "section"]
    assert hints["section"] is typing.get_type_hints(module.section_of)["return"]
    assert hints["paths"].__name__ == f"{name.capitalize()}Paths"
    assert Settings not in hints.values()


@pytest.mark.parametrize("name", STAGE_NAMES)
def test_only_section_of_sees_the_whole_settings(name):
    # Reading a key outside the section would need Settings in the stage's code: only section_of may take it.
    tree = ast.parse(inspect.getsource(stage_module(name)))
    takes_settings = sorted(
        node.name for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef) and node.name != "main"
        and any(isinstance(arg.annotation, ast.Name) and arg.annotation.id == "Settings" for arg in node.args.args)
    )
    assert takes_settings == ["section_of"]


def test_a_dotted_key_reads_one_value_and_validate_reads_its_aliased_section(small_settings):
    assert settings_value(small_settings, "train.torch_threads") == small_settings.train.torch_threads
    assert settings_value(small_settings, "evaluate.fpr_for_recall") == small_settings.evaluate.fpr_for_recall
    assert settings_value(small_settings, "validate") is small_settings.validate_
