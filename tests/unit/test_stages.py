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


# Modules that cannot change a stage's outputs: error classes, log set-up, where the project's files are (a move
# shows as outs that no longer match), signal handling. Anything else a stage imports is a dependency.
PLUMBING = {"errors", "logs", "paths", "shutdown"}


def _module_file(name: str):
    base = PROJECT_ROOT / "src" / name.replace(".", "/")
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _fraudguard_imports(path) -> set[str]:
    """Every fraudguard module `path` imports, at module level or inside a function (a lazy import is still run)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.split(".")[0] == "fraudguard"}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "fraudguard":
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names
                      if _module_file(f"{node.module}.{alias.name}") is not None}
    return found


def imported_code(stage: str) -> set[str]:
    """The source files (relative to the project) of every fraudguard module the stage's module reaches."""
    seen: set[str] = set()
    todo = [f"fraudguard.stages.{stage}"]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        path = _module_file(name)
        if path is not None:
            todo += sorted(_fraudguard_imports(path))
    files = {_module_file(name) for name in seen} - {None}
    return {str(f.relative_to(PROJECT_ROOT)) for f in files
            if f.name != "__init__.py" and f.stem not in PLUMBING}


@pytest.mark.parametrize("name", STAGE_NAMES)
def test_dvc_yaml_lists_every_module_the_stage_imports_as_a_dependency(name):
    # config.py was missing from every stage: a changed default or validator of the settings left `dvc status`
    # clean, so `register` signed weights the committed code no longer produces.
    declared = set(DVC_STAGES[name]["deps"])
    missing = sorted(imported_code(name) - declared)
    assert not missing, f"dvc.yaml stage {name} does not list the code it imports: {missing}"


def test_params_yaml_writes_out_every_setting_that_has_a_value():
    # A tunable that exists only as a code default (train.gradient_penalty, model.linear_term were) is not the
    # single source's: nobody reviewing params.yaml sees it, and a change of it in config.py moves no params hash.
    from fraudguard.config import flat_keys, load_params_yaml, load_settings

    written = flat_keys(load_params_yaml((PROJECT_ROOT / "params.yaml").read_text(encoding="utf-8"), "params.yaml"))
    effective = flat_keys(load_settings(PROJECT_ROOT / "params.yaml").as_params_dict())
    unwritten = {key: value for key, value in effective.items() if key not in written and value is not None}
    assert not unwritten, f"settings with a value that params.yaml does not write out: {unwritten}"


def test_the_committed_dvc_lock_holds_the_code_and_params_of_this_tree():
    # A fresh clone's `dvc status` must be clean on code and params: the committed outputs (models/*.json, the
    # weights' md5) are then what this tree's code and params.yaml produce. A stage's code edited without
    # `dvc repro` (validate's, twice) left the lock naming code no longer in the tree.
    import hashlib

    lock = yaml.safe_load((PROJECT_ROOT / "dvc.lock").read_text(encoding="utf-8"))["stages"]
    params = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text(encoding="utf-8"))
    stale: list[str] = []
    for name, stage in DVC_STAGES.items():
        locked = lock[name]
        locked_deps = {dep["path"]: dep["md5"] for dep in locked["deps"]}
        for dep in stage["deps"]:
            if dep.startswith("src/"):
                md5 = hashlib.md5((PROJECT_ROOT / dep).read_bytes(), usedforsecurity=False).hexdigest()
                if locked_deps.get(dep) != md5:
                    stale.append(f"{name}: {dep}")
        locked_params = locked.get("params", {}).get("params.yaml", {})
        for key in stage.get("params", []):
            value = params
            for part in key.split("."):
                value = value[part]
            if locked_params.get(key) != value:
                stale.append(f"{name}: params {key}")
    assert not stale, f"dvc.lock is stale (run `dvc repro` and commit dvc.lock with its outputs): {stale}"
