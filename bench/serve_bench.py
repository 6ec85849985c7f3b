"""Latency and throughput of the scoring gateway's POST /score (raw transaction in: validation, online
features from the SQLite state, verified champion, prediction log), side by side in the same run with
`mlflow models serve` of the same champion on precomputed features, and the in-process baseline of the
bundle's predict_proba.

    python bench/serve_bench.py [--rate 200] [--seconds 10] [--keep]

Set-up (scratch dir): the default-size simulated world (params.yaml simulate), a random-weight champion
registered with the real tracking code and promoted with stand-in gates (the test helpers), the gateway
started with the real CLI (`fraudguard serve`) in its own process, its state bootstrapped from all but the
newest 4 days; the load replays those 4 days in time order.
  open loop   requests sent at --rate per second (asyncio + aiohttp, at most 64 in flight) for --seconds;
              latency from send to response; p50/p99 and the achieved rate.
  closed loop 16 concurrent clients as fast as responses come, 5 s: throughput.
  mlflow      `mlflow models serve -m models:/fraudguard@champion --env-manager local -w 1` on a free
              127.0.0.1 port, POST /invocations of one precomputed feature row (dataframe_split), the same
              open and closed loops, after the gateway has stopped (one service at a time on the cores).
  baseline    bundle.predict_proba on one precomputed feature row (a 1-row DataFrame), 2000 calls.
The load generator shares the machine's cores with the server: figures are conservative.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess  # nosec B404 - starts this project's own CLI with a fixed argument list
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from bench_project import BIN, ROOT, print_bench_json, scratch_dir

sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "integration")]
KEY = "bench-key-0123456789abcdef"
REPLAY_DAYS = 4


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _setup(tmp: Path) -> tuple[Path, dict[str, str], pd.DataFrame, object]:
    from mlflow import MlflowClient

    from fraudguard.config import load_settings
    from fraudguard.data.simulator import simulate_transactions
    from fraudguard.model import load_bundle
    from fraudguard.policy import committed_policy
    from fraudguard.promotion import decide, prepare, run_gates
    from fraudguard.tracking import configure_mlflow, log_training_run
    from registry_helpers import all_passing_gates, candidate_for, commit_params, simple_context, \
        write_pipeline_outputs

    root = tmp / "project"
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp / 'mlflow.db'}",
           "FRAUDGUARD_SIGNING_KEY": str(tmp / "keys" / "signing-key.pem"),
           "FRAUDGUARD_AUDIT_ANCHOR_DIR": str(tmp / "keys" / "anchors"), "FRAUDGUARD_API_KEYS": f"bench:{KEY}",
           "FRAUDGUARD_LOG_LEVEL": "WARNING", "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    os.environ.update({k: env[k] for k in ("MLFLOW_TRACKING_URI", "FRAUDGUARD_SIGNING_KEY",
                                           "FRAUDGUARD_AUDIT_ANCHOR_DIR")})
    write_pipeline_outputs(root, 0)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["serve"] = {"rate_limit_per_s": 100000, "rate_limit_burst": 100000, "reload_interval_s": 5}
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    settings = load_settings(root / "params.yaml")
    client = configure_mlflow(root, settings.registry)
    version = log_training_run(root, settings).version
    commit_params(root)
    report_dir = root / "reports" / "bench"
    report_dir.mkdir(parents=True, exist_ok=True)
    run = prepare(MlflowClient(), root, settings, version, policy=committed_policy(root, settings),
                  gates=all_passing_gates(), candidate=candidate_for(client, "fraudguard", version),
                  context=simple_context(settings, root, report_dir))
    decide(MlflowClient(), run, *run_gates(run), actor="bench")
    world = simulate_transactions(load_settings(ROOT / "params.yaml").simulate)
    cutoff = world["TX_DATETIME"].max().normalize() - pd.Timedelta(days=REPLAY_DAYS - 1)
    history = root / "data" / "validated" / "transactions.parquet"
    history.parent.mkdir(parents=True, exist_ok=True)
    world[world["TX_DATETIME"] < cutoff].to_parquet(history)
    bundle = load_bundle(root / "models" / "model.pt", root / "models" / "preprocess.json")
    return root, env, world[world["TX_DATETIME"] >= cutoff].reset_index(drop=True), bundle


def _bodies(replay: pd.DataFrame) -> list[dict]:
    return [{"TRANSACTION_ID": int(r.TRANSACTION_ID), "TX_DATETIME": r.TX_DATETIME.isoformat(),
             "CUSTOMER_ID": int(r.CUSTOMER_ID), "TERMINAL_ID": int(r.TERMINAL_ID), "TX_AMOUNT": float(r.TX_AMOUNT)}
            for r in replay.itertuples()]


async def _open_loop(url: str, path: str, headers: dict, bodies: list[dict],
                     rate: float) -> tuple[list[float], int, float]:
    import aiohttp

    latencies, errors, in_flight = [], 0, asyncio.Semaphore(64)
    async with aiohttp.ClientSession(base_url=url, headers=headers,
                                     connector=aiohttp.TCPConnector(limit=64)) as http:
        async def one(body):
            nonlocal errors
            async with in_flight:
                start = time.perf_counter()
                async with http.post(path, json=body) as response:
                    await response.read()
                latencies.append(time.perf_counter() - start)
                errors += response.status != 200

        start, tasks = time.perf_counter(), []
        for i, body in enumerate(bodies):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(body)))
        await asyncio.gather(*tasks)
        return latencies, errors, len(bodies) / (time.perf_counter() - start)


async def _closed_loop(url: str, path: str, headers: dict, bodies: list[dict], seconds: float,
                       clients: int = 16) -> tuple[int, float, int]:
    import aiohttp

    queue, done, errors = iter(bodies), 0, 0
    async with aiohttp.ClientSession(base_url=url, headers=headers) as http:
        deadline = time.perf_counter() + seconds

        async def worker():
            nonlocal done, errors
            for body in queue:
                if time.perf_counter() > deadline:
                    return
                async with http.post(path, json=body) as response:
                    await response.read()
                done += 1
                errors += response.status != 200

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        return done, done / (time.perf_counter() - start), errors


def _wait_ready(url: str, proc: subprocess.Popen, what: str, log: Path, timeout_s: float = 180) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"{what} did not start:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)


def _measure(url: str, path: str, headers: dict, bodies: list[dict], rate: float, seconds: float) -> dict:
    """Warm-up, then the open loop at `rate` and the closed loop: latencies, achieved rate, throughput, errors."""
    n_open = int(rate * seconds)
    asyncio.run(_open_loop(url, path, headers, bodies[:100], rate))  # warm-up
    latencies, errors, achieved = asyncio.run(_open_loop(url, path, headers, bodies[100:100 + n_open], rate))
    done, throughput, closed_errors = asyncio.run(_closed_loop(url, path, headers, bodies[100 + n_open:], 5.0))
    return {"p50_ms": round(_pct(latencies, 50), 3), "p99_ms": round(_pct(latencies, 99), 3),
            "offered_rps": rate, "achieved_rps": round(achieved, 1), "requests": n_open,
            "errors": errors + closed_errors, "max_rps_16_clients": round(throughput, 1), "closed_requests": done}


def _handler_latency(root: Path, bodies: list[dict]) -> dict:
    """The request path's inside, from the prediction log: latency_ms is measured in the handler from its
    start to the decision (features, state write, model), before logging and the response; the rest of the
    client's latency is HTTP, validation, the guard, queueing behind other requests and the load generator."""
    from fraudguard.serving.predictions import read_prediction_log

    log = read_prediction_log(root / "state" / "serve" / "predictions.jsonl").set_index("TRANSACTION_ID")
    inside = log.loc[[b["TRANSACTION_ID"] for b in bodies], "latency_ms"].to_numpy(dtype=float)
    return {"handler_p50_ms": round(float(np.percentile(inside, 50)), 3),
            "handler_p99_ms": round(float(np.percentile(inside, 99)), 3)}


def _mlflow_bodies(features: pd.DataFrame, columns: list[str]) -> list[dict]:
    split = features[columns].to_dict(orient="split")
    return [{"dataframe_split": {"columns": columns, "data": [row]}} for row in split["data"]]


def _baseline(bundle, features: pd.DataFrame, n: int = 2000) -> list[float]:
    rows = [features.iloc[[i % len(features)]] for i in range(n)]
    times = []
    for row in rows:
        start = time.perf_counter()
        bundle.predict_proba(row)
        times.append(time.perf_counter() - start)
    return times


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values) * 1000, q))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    import torch

    from fraudguard.config import load_settings
    from fraudguard.features import compute_features

    torch.set_num_threads(1)
    with scratch_dir("fraudguard-serve-bench-", args.keep) as tmp:
        root, env, replay, bundle = _setup(tmp)
        features = compute_features(replay.assign(TX_FRAUD=0), load_settings(root / "params.yaml").featurize)
        port = _free_port()
        gateway_log = tmp / "gateway.log"
        with gateway_log.open("w") as log:
            server = subprocess.Popen([str(BIN / "fraudguard"), "serve", "--root", str(root), "--port", str(port)],  # nosec B603
                                      env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
        try:
            url = f"http://127.0.0.1:{port}"
            _wait_ready(f"{url}/health", server, "gateway", log=gateway_log)
            bodies = _bodies(replay)
            gateway = _measure(url, "/score", {"X-API-Key": KEY}, bodies, args.rate, args.seconds)
        finally:
            server.terminate()
            server.wait(timeout=30)
        gateway.update(_handler_latency(root, bodies[100:100 + int(args.rate * args.seconds)]))
        port = _free_port()
        mlflow_log = tmp / "mlflow-serve.log"  # a file, not a pipe: an unread pipe fills and blocks the server
        with mlflow_log.open("w") as log:
            mlflow_server = subprocess.Popen(  # nosec B603 - mlflow of this environment, fixed argv
                [str(BIN / "mlflow"), "models", "serve", "-m", "models:/fraudguard@champion", "--env-manager",
                 "local", "-h", "127.0.0.1", "-p", str(port), "-w", "1"], env=env, stdout=log,
                stderr=subprocess.STDOUT, text=True, start_new_session=True)
        try:
            url = f"http://127.0.0.1:{port}"
            _wait_ready(f"{url}/ping", mlflow_server, "mlflow models serve", log=mlflow_log)
            try:
                served = _measure(url, "/invocations", {}, _mlflow_bodies(features, list(bundle.features)),
                                  args.rate, args.seconds)
            except Exception:
                print(f"mlflow models serve failed; its log:\n{mlflow_log.read_text()[-3000:]}")
                raise
        finally:
            os.killpg(mlflow_server.pid, 15)
            mlflow_server.wait(timeout=30)
        base = _baseline(bundle, features)
    figures = {**{f"gateway_{k}": v for k, v in gateway.items()}, **{f"mlflow_serve_{k}": v for k, v in served.items()},
               "baseline_predict_proba_p50_ms": round(_pct(base, 50), 3),
               "baseline_predict_proba_p99_ms": round(_pct(base, 99), 3)}
    for q in ("p50", "p99"):
        figures[f"{q}_ratio_gateway_vs_mlflow_serve"] = round(gateway[f"{q}_ms"] / served[f"{q}_ms"], 2)
        figures[f"{q}_ratio_gateway_vs_baseline"] = round(gateway[f"{q}_ms"] / figures[f"baseline_predict_proba_{q}_ms"], 1)
    figures["throughput_ratio_gateway_vs_mlflow_serve"] = round(
        gateway["max_rps_16_clients"] / served["max_rps_16_clients"], 2)
    for name, f in (("POST /score (gateway, raw transaction)", gateway),
                    ("POST /invocations (mlflow models serve, precomputed features)", served)):
        print(f"{name} at {args.rate:g} req/s for {args.seconds:g} s ({f['requests']} requests, {f['errors']} errors): "
              f"p50 {f['p50_ms']} ms, p99 {f['p99_ms']} ms, achieved {f['achieved_rps']:.0f} req/s; "
              f"closed loop, 16 clients: {f['max_rps_16_clients']:.0f} req/s")
    print(f"gateway handler (features, state write, model; from the prediction log): p50 {gateway['handler_p50_ms']} ms, "
          f"p99 {gateway['handler_p99_ms']} ms")
    print(f"in-process bundle.predict_proba, 1 precomputed row: p50 {figures['baseline_predict_proba_p50_ms']} ms, "
          f"p99 {figures['baseline_predict_proba_p99_ms']} ms")
    print(f"ratio gateway/mlflow serve: p50 x{figures['p50_ratio_gateway_vs_mlflow_serve']}, "
          f"p99 x{figures['p99_ratio_gateway_vs_mlflow_serve']}, throughput x{figures['throughput_ratio_gateway_vs_mlflow_serve']}")
    print(f"target p99 <= 20 ms at 200 req/s: {'met' if gateway['p99_ms'] <= 20 and args.rate >= 200 else 'NOT met'}")
    print_bench_json(figures)


if __name__ == "__main__":
    main()
