"""The table of gates and the Gate contract every gate follows."""

from __future__ import annotations

import importlib

from fraudguard.config import GatesSettings
from fraudguard.gates.base import Gate
from fraudguard.gates.table import GATE_TABLE


def test_the_table_lists_every_gates_section_of_params_in_order():
    assert list(GATE_TABLE) == list(GatesSettings.model_fields)


def test_each_gate_is_named_after_its_key_and_module_and_reads_its_own_section(small_settings):
    for key, gate in GATE_TABLE.items():
        module = importlib.import_module(f"fraudguard.gates.{key}")
        assert isinstance(gate, Gate)
        assert gate.name == key == module.NAME and module.GATE is gate
        assert gate.section(small_settings.gates) is getattr(small_settings.gates, key)
        assert all(isinstance(name, str) for name in gate.heavy_imports)

