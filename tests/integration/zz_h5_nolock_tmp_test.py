import contextlib, sys
sys.path.insert(0, "/work/main/tests/integration")
import test_registry as t
t._WORKER = t._WORKER.replace("from fraudguard.registry import set_champion", "import contextlib, fraudguard.registry as R\nR.registry_lock = lambda c, timeout_s=None: contextlib.nullcontext()\nfrom fraudguard.registry import set_champion")
from test_registry import *
test_two_concurrent_processes_end_consistent = t.test_two_concurrent_processes_end_consistent
