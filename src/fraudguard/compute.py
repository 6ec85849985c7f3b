"""Where a gate's heavy sweep runs: here, in order, or spread as tasks over a Dask cluster.

params.yaml's `compute` section says where the gates run (flows/train_and_promote.py puts them on prefect-dask's
DaskTaskRunner when it names a cluster). A gate with a sweep of independent attacks asks this module for an
executor and submits one task per attack; the outcomes are the same wherever they run.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from concurrent.futures import Executor
from typing import TYPE_CHECKING, Iterator

if TYPE_CHECKING:
    from fraudguard.config import ComputeSettings

logger = logging.getLogger(__name__)


def in_dask_worker() -> bool:
    """True inside a task a Dask worker is running (the flow's DaskTaskRunner put the gate there)."""
    if "distributed" not in sys.modules:  # a Dask worker has it loaded; importing it to ask costs ~1 s
        return False
    try:
        from distributed import get_worker
    except ImportError:
        return False
    try:
        get_worker()
    except ValueError:
        return False
    return True


@contextlib.contextmanager
def attack_executor(compute: "ComputeSettings") -> Iterator[Executor | None]:
    """An executor on a Dask cluster for a sweep's tasks, or None to run them here, in order.

    Inside a Dask worker: the worker's own cluster, the gate's thread seceding while it waits, so the sweep's
    tasks can take its slot (with one thread per worker it would otherwise wait on itself). Elsewhere with
    compute.dask_address: a client of that scheduler for the sweep. Otherwise (the default, and a LocalCluster
    that only the flow starts): None.
    """
    if in_dask_worker():
        from distributed import worker_client

        with worker_client() as client:
            logger.info("attack sweep on the Dask cluster %s (from a worker)", client.scheduler.address)
            yield client.get_executor(pure=False)  # every sweep runs: no reuse of a past task by its inputs
        return
    if compute.dask_address:
        from distributed import Client

        with Client(compute.dask_address, security=dask_client_security(compute)) as client:
            logger.info("attack sweep on the Dask cluster %s", compute.dask_address)
            yield client.get_executor(pure=False)  # every sweep runs: no reuse of a past task by its inputs
        return
    yield None


def dask_client_security(compute: "ComputeSettings"):
    """The mutual-TLS security of a client of compute.dask_address (the config requires the three files with an
    address); None when no certificate is set (a caller that built the settings without validation)."""
    if compute.dask_tls_ca_file is None:
        return None
    from distributed.security import Security

    return Security(tls_ca_file=str(compute.dask_tls_ca_file), tls_client_cert=str(compute.dask_tls_cert_file),
                    tls_client_key=str(compute.dask_tls_key_file), require_encryption=True)


def local_cluster_security():
    """A LocalCluster's own throw-away certificate: TLS between its scheduler, workers and this client, so that no
    other local process can connect and run code on workers that hold the signing key."""
    from distributed.security import Security

    return Security.temporary()
