"""Rollback latency and the cost of signed evidence (attestations) at promotion, rollback and model load.

    python bench/rollback_bench.py [--n 5] [--keep]

1. `fraudguard rollback --to V` as a user runs it (a fresh subprocess: interpreter start-up, registry read,
   audit-chain check, attestation check, download + sha256 of the served files, journaled move) against a
   bare subprocess script that only moves an alias with `MlflowClient().set_registered_model_alias`.
   Issue target: CLI / bare script <= 1.5, verification included.
2. The same in-process: `promotion.rollback(...)` against one `set_registered_model_alias` call.
3. Signing at promotion: download + digest of the served model (timed alone), then building, signing and
   storing the attestation (`promotion_statement` + `sign_and_store`).
4. Verification: at rollback (`load_attestation` + `check_served_copy`) and at load
   (`mlflow.pyfunc.load_model("models:/fraudguard/<champion>")`, which calls `verify_loaded_model` inside
   `load_context`, against `verify_loaded_model(model_dir)` alone on the directory it downloaded).

The bare baselines move the `champion` alias of a SEPARATE registered model ("fraudguard-bare", versions
pointing at the same model source, same store): moving the alias of the model fraudguard manages by hand is
tampering, which fraudguard detects and which would make the next rollback refuse.

Works in a throw-away copy of the project (see bench_project.make_temp_project), with its own signing key
and audit anchors inside the scratch directory; the checkout's stores and ~/.config are untouched.
A/B pairs are interleaved (and their order alternated) so load changes on a shared machine hit both alike.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_project import (  # noqa: E402
    BIN,
    make_temp_project,
    print_bench_json,
    run_cmd,
    scratch_dir,
    timed,
)

BARE_MODEL = "fraudguard-bare"
CLI_TARGET_RATIO = 1.5
BARE_SCRIPT = ("import sys; from mlflow import MlflowClient; "
               "MlflowClient().set_registered_model_alias(sys.argv[1], 'champion', sys.argv[2])")


def subprocess_seconds(cmd: list[str], cwd: Path, env: dict[str, str]) -> float:
    start = time.perf_counter()
    run_cmd(cmd, cwd, env)
    return time.perf_counter() - start


def med(xs: list[float]) -> float:
    return statistics.median(xs)


def fmt_s(xs: list[float]) -> str:
    return f"{med(xs):7.3f} s  ({min(xs):.3f}-{max(xs):.3f})"


def fmt_ms(xs: list[float]) -> str:
    return f"{med(xs) * 1000:8.1f} ms ({min(xs) * 1000:.1f}-{max(xs) * 1000:.1f})"


def ms(xs: list[float]) -> float:
    return round(med(xs) * 1000, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=5, help="timed runs per method")
    parser.add_argument("--keep", action="store_true", help="keep the temp project (path printed)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    with scratch_dir("fraudguard-rollback-bench-", args.keep) as tmp:
        # Signing key and audit anchors inside the scratch dir, for this process and every subprocess.
        keys = {"FRAUDGUARD_SIGNING_KEY": str(tmp / "keys" / "signing-key.pem"),
                "FRAUDGUARD_AUDIT_ANCHOR_DIR": str(tmp / "keys" / "anchors")}
        os.environ.update(keys)
        os.environ.pop("FRAUDGUARD_VERIFY_KEY", None)  # verify with the bench key's public half
        root, env = make_temp_project(tmp)
        env.update(keys)
        env.pop("FRAUDGUARD_VERIFY_KEY", None)
        # Quieter output, in this process only: the subprocesses run as a user runs them (output captured).
        os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"

        import mlflow
        import mlflow.artifacts
        import mlflow.pyfunc

        from fraudguard.attestation import (
            check_served_copy,
            download_served_model,
            load_attestation,
            promotion_statement,
            served_digests,
            sign_and_store,
            verify_loaded_model,
        )
        from fraudguard.config import load_settings
        from fraudguard.gates.base import GateResult
        from fraudguard.pipeline import reproduce_stages
        from fraudguard.policy import committed_policy
        from fraudguard.promotion import promote_version, rollback
        from fraudguard.registry import (
            CHAMPION_ALIAS,
            get_champion_version,
            get_version,
            newest_verdict,
            read_state,
        )
        from fraudguard.signing import load_signer, sign_envelope
        from fraudguard.tracking import configure_mlflow, log_training_run
        from fraudguard.verification import verify_registry

        _, repro_s = timed(reproduce_stages, root)
        settings = load_settings(root / "params.yaml")
        name = settings.registry.model_name
        client = configure_mlflow(root, settings.registry)
        signer = load_signer()  # created here, inside the scratch dir, on first use
        verifier = signer.verifier()

        # ---------------------------------------------------------------------------------- set-up
        # Stand-in gates named after every configured gate, so the signed pass attestation covers the whole
        # policy (rollback requires that). SET-UP ONLY: the real gates are not what this bench measures.
        gate_names = list(type(settings.gates).model_fields)

        def stand_in(gate: str):
            def run(candidate, context, section) -> GateResult:
                return GateResult(name=gate, passed=True, metrics={}, thresholds={},
                                  reason="bench set-up stand-in: always passes")
            return run

        stand_ins = {gate: stand_in(gate) for gate in gate_names}
        versions: list[int] = []
        promote_s: list[float] = []
        for _ in range(2):
            record = log_training_run(root, settings)
            outcome, seconds = timed(promote_version, client, root, settings, version=record.version,
                                     actor="bench", gates=stand_ins)
            assert outcome.promoted, outcome.summary()
            promote_s.append(seconds)
            versions.append(int(record.version))
        a, b = versions
        policy = committed_policy(root, settings)

        # The bare baselines' model: same store, versions pointing at the same model sources.
        client.create_registered_model(BARE_MODEL)
        bare_versions = []
        for v in versions:
            mv = client.get_model_version(name, str(v))
            bare_versions.append(int(client.create_model_version(BARE_MODEL, source=mv.source, run_id=mv.run_id).version))
        ba, bb = bare_versions
        client.set_registered_model_alias(BARE_MODEL, CHAMPION_ALIAS, str(ba))

        print(f"temp project {root}: dvc repro {repro_s:.1f} s; versions {a} and {b} of {name!r} registered from the "
              f"same trained outputs and promoted ({', '.join(f'{s:.1f} s' for s in promote_s)}) under policy "
              f"{policy.source} with ALWAYS-PASS STAND-IN gates named {', '.join(gate_names)} (set-up only: the "
              f"real gates are not measured here); champion = {get_champion_version(client, name)}. Bare "
              f"baselines move the alias of a separate model {BARE_MODEL!r} (versions {ba}, {bb}, same sources).")

        def other(current: int | None, pair: tuple[int, int]) -> int:
            return pair[0] if current == pair[1] else pair[1]

        # ------------------------------------------------------- 1. CLI vs bare script, subprocesses
        cli_s, bare_s = [], []
        fraudguard = str(BIN / "fraudguard")
        for i in range(args.n):
            def cli() -> None:
                target = other(get_champion_version(client, name), (a, b))
                cli_s.append(subprocess_seconds(
                    [fraudguard, "rollback", "--to", str(target), "--reason", "bench", "--root", str(root)],
                    root, env))
                assert get_champion_version(client, name) == target, "fraudguard rollback did not move champion"

            def bare() -> None:
                target = other(get_champion_version(client, BARE_MODEL), (ba, bb))
                bare_s.append(subprocess_seconds([sys.executable, "-c", BARE_SCRIPT, BARE_MODEL, str(target)],
                                                 root, env))
                assert get_champion_version(client, BARE_MODEL) == target, "bare script did not move the alias"

            for step in ((cli, bare) if i % 2 == 0 else (bare, cli)):
                step()

        # -------------------------------------------------- 2. in-process rollback vs one alias call
        rollback(client, settings, to_version=other(get_champion_version(client, name), (a, b)), reason="warm-up")
        client.set_registered_model_alias(BARE_MODEL, CHAMPION_ALIAS,
                                          str(other(get_champion_version(client, BARE_MODEL), (ba, bb))))
        lib_s, alias_s = [], []
        for i in range(args.n):
            def lib() -> None:
                target = other(get_champion_version(client, name), (a, b))
                lib_s.append(timed(rollback, client, settings, to_version=target, reason="bench")[1])
                assert get_champion_version(client, name) == target

            def alias() -> None:
                target = other(get_champion_version(client, BARE_MODEL), (ba, bb))
                alias_s.append(timed(client.set_registered_model_alias, BARE_MODEL, CHAMPION_ALIAS, str(target))[1])
                assert get_champion_version(client, BARE_MODEL) == target

            for step in ((lib, alias) if i % 2 == 0 else (alias, lib)):
                step()

        # ---------------------------------------------------------- 3. signing at promotion
        # Statement built from a real fraudguard version and the digests of what it serves; stored on a
        # fraudguard-bare version (same store, one tag write either way) so the managed versions do not
        # collect extra attestations that every later load would verify.
        champion = get_champion_version(client, name)
        champion_mv = get_version(client, name, champion)
        bare_mv = client.get_model_version(BARE_MODEL, str(ba))
        results = [GateResult(name=g, passed=True, metrics={}, thresholds={}, reason="bench stand-in")
                   for g in gate_names]
        digest_s, attest_s, sign_only_s = [], [], []
        for _ in range(args.n):
            with tempfile.TemporaryDirectory(prefix="digest-", dir=tmp) as d:
                start = time.perf_counter()
                digests = served_digests(download_served_model(client, name, champion, Path(d)))
                digest_s.append(time.perf_counter() - start)
            start = time.perf_counter()
            statement = promotion_statement(champion_mv, digests, results, policy, actor="bench", approver="",
                                            champion_before=other(champion, (a, b)))
            sign_and_store(client, bare_mv, statement, signer)
            attest_s.append(time.perf_counter() - start)
            sign_only_s.append(timed(sign_envelope, signer, statement)[1])

        # -------------------------------------------------------- 4a. verification at rollback
        state = read_state(client, name, verifier)
        verdict = newest_verdict(state.entries, champion)
        assert verdict is not None and verdict.attestation, "champion has no committed promotion in the audit log"
        load_att_s, served_s = [], []
        for _ in range(args.n):
            mv = get_version(client, name, champion)
            attestation, seconds = timed(load_attestation, mv, verdict.attestation, verifier)
            load_att_s.append(seconds)
            served_s.append(timed(check_served_copy, client, mv, attestation)[1])
        verify_rb_s = [x + y for x, y in zip(load_att_s, served_s)]

        # ------------------------------------------------------------- 4b. verification at load
        uri = f"models:/{name}/{champion}"
        load_dir = tmp / "loads"
        load_dir.mkdir()

        def load_once(tag: str) -> tuple[float, float]:
            dst = load_dir / tag
            dst.mkdir()
            start = time.perf_counter()
            model = mlflow.pyfunc.load_model(uri, dst_path=str(dst))
            seconds = time.perf_counter() - start
            verified = getattr(model.unwrap_python_model(), "verified_version", None)
            assert verified == champion, f"load_context verified version {verified}, expected {champion}"
            meta = next(dst.rglob("registered_model_meta"))
            version, verify_seconds = timed(verify_loaded_model, meta.parent)
            assert version == champion, f"verify_loaded_model returned {version}, expected {champion}"
            return seconds, verify_seconds

        load_once("warm-up")
        load_s, verify_load_s, download_s = [], [], []
        for i in range(args.n):
            seconds, verify_seconds = load_once(f"load-{i}")
            load_s.append(seconds)
            verify_load_s.append(verify_seconds)
            dst = load_dir / f"download-{i}"
            dst.mkdir()
            download_s.append(timed(mlflow.artifacts.download_artifacts, artifact_uri=uri, dst_path=str(dst))[1])

        # The bare moves never touched fraudguard's alias: the registry still verifies end to end.
        report = verify_registry(client, name, verifier)
        registry_ok = report.ok

        # ------------------------------------------------------------------------------ report
        cli_ratio = med(cli_s) / med(bare_s)
        lib_ratio = med(lib_s) / med(alias_s)
        load_share = med(verify_load_s) / med(load_s)
        rollback_verify_share = med(verify_rb_s) / med(lib_s)
        met = cli_ratio <= CLI_TARGET_RATIO
        def row(label: str, value: str) -> None:
            print(f"  {label:<58} {value}")

        print(f"\nN = {args.n} per method; medians (min-max); A/B pairs interleaved, order alternated")
        print("1. subprocess")
        row("`fraudguard rollback --to V`", fmt_s(cli_s))
        row(f"`python -c <set_registered_model_alias>` ({BARE_MODEL})", fmt_s(bare_s))
        row("ratio CLI / bare script", f"{cli_ratio:7.2f}   (target <= {CLI_TARGET_RATIO} including verification: "
            f"{'met' if met else 'NOT met'})")
        print("2. in-process")
        row("promotion.rollback(...)", fmt_ms(lib_s))
        row(f"client.set_registered_model_alias ({BARE_MODEL})", fmt_ms(alias_s))
        row("ratio rollback / bare alias call", f"{lib_ratio:7.2f}   (rollback also takes the registry lock, checks "
            "the signed audit chain and anchor, verifies the attestation, downloads and sha256-checks the served "
            "files, writes intent/commit audit entries and status tags)")
        print("3. signing at promotion")
        row("download served model + digests", fmt_ms(digest_s))
        row("promotion_statement + sign_and_store", fmt_ms(attest_s))
        row("  of which sign_envelope (Ed25519, DSSE) alone", fmt_ms(sign_only_s))
        print("4. verification")
        row("at rollback: load_attestation", fmt_ms(load_att_s))
        row("at rollback: check_served_copy (download + sha256)", fmt_ms(served_s))
        row("at rollback: both", f"{fmt_ms(verify_rb_s)}  = {rollback_verify_share:.0%} of the in-process "
            "rollback median")
        row(f"at load: mlflow.pyfunc.load_model({uri!r})", fmt_ms(load_s))
        row("at load: verify_loaded_model(model_dir) alone", f"{fmt_ms(verify_load_s)}  = {load_share:.0%} of the "
            "load median")
        row(f"(for scale) download_artifacts({uri!r}) alone", fmt_ms(download_s))
        print(f"registry after the bench: `audit verify` {'OK' if registry_ok else 'PROBLEMS: ' + '; '.join(report.problems)}"
              f" ({report.entries} audit entries, champion {report.champion})")
        print(f"cores usable: {len(os.sched_getaffinity(0))}; load avg (1 min) {os.getloadavg()[0]:.2f}")
        figures = {
            "n": args.n,
            "cli_median_s": round(med(cli_s), 4),
            "bare_script_median_s": round(med(bare_s), 4),
            "ratio_cli_vs_bare_script": round(cli_ratio, 3),
            "cli_target_ratio": CLI_TARGET_RATIO,
            "cli_target_met": met,
            "inprocess_rollback_median_ms": ms(lib_s),
            "inprocess_alias_median_ms": ms(alias_s),
            "ratio_inprocess_rollback_vs_alias": round(lib_ratio, 3),
            "promotion_download_digest_median_ms": ms(digest_s),
            "promotion_statement_sign_store_median_ms": ms(attest_s),
            "sign_envelope_median_ms": ms(sign_only_s),
            "rollback_load_attestation_median_ms": ms(load_att_s),
            "rollback_check_served_copy_median_ms": ms(served_s),
            "rollback_verification_median_ms": ms(verify_rb_s),
            "rollback_verification_share": round(rollback_verify_share, 3),
            "load_model_median_ms": ms(load_s),
            "verify_loaded_model_median_ms": ms(verify_load_s),
            "verify_share_of_load": round(load_share, 3),
            "download_models_uri_median_ms": ms(download_s),
            "registry_verifies_after": registry_ok,
            "setup_gates": "always-pass stand-ins named " + ",".join(gate_names),
            "cli_all_s": [round(x, 4) for x in cli_s],
            "bare_script_all_s": [round(x, 4) for x in bare_s],
        }
    print_bench_json(figures)


if __name__ == "__main__":
    main()
