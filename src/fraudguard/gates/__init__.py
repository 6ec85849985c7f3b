"""Promotion gates: each module exposes one `(candidate, context, settings) -> GateResult` function."""
