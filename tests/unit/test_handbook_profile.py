"""params.handbook.yaml: merges over params.yaml (every key known) into the handbook-size world."""

from __future__ import annotations

import yaml

from fraudguard.ci_report import merge_ci_profile

from conftest import PROJECT_ROOT


def test_handbook_profile_sizes_the_handbook_world_and_its_split_fits_the_days():
    params = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    profile = yaml.safe_load((PROJECT_ROOT / "params.handbook.yaml").read_text())
    settings, changes = merge_ci_profile(params, profile, source="params.handbook.yaml")
    sim = settings.simulate
    assert (sim.n_customers, sim.n_terminals, sim.n_days) == (5000, 10000, 183)
    assert settings.evaluate.card_precision_k == 100
    split = settings.featurize.split
    assert settings.featurize.warmup_days + split.train_days + split.delay_gap_days + split.test_days <= sim.n_days
    # Only what the profile names changes; thresholds and the threat model stay params.yaml's.
    assert all(key.split(".")[0] in profile for key in changes)
    assert settings.gates == merge_ci_profile(params, {}, source="none")[0].gates
