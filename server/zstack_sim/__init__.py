"""A simulated ZStack management node for tests, benchmarks and demos of the gateway.

It serves, over real HTTP, what the gateway talks to (``/zstack/v1/...``, following
``zstack-rest-contract.md``) and a control plane (``/_sim/...``, see :mod:`zstack_sim.control`) for
fault injection, request logs, stats and clock/session/config changes.

* :class:`Simulator` (asyncio) and :func:`run_in_thread` (synchronous code, e.g. pytest) run it.
* :func:`demo_data`, :func:`generate` and :func:`load_data` build its :class:`SimData`.
* ``DEMO_*`` are the demo data's well-known ids and credentials.
"""

from zstack_sim.data import DataError, SimData, load_data
from zstack_sim.demo import (
    DEMO_ACCESS_KEY_ID,
    DEMO_ACCESS_KEY_SECRET,
    DEMO_ACCOUNT_NAME,
    DEMO_ACCOUNT_PASSWORD,
    DEMO_ACCOUNT_UUID,
    DEMO_EMPTY_VM_UUID,
    DEMO_IMAGE_UUIDS,
    DEMO_ISO_UUID,
    DEMO_MISSING_VM_UUID,
    DEMO_MN_UUID,
    DEMO_SECOND_ISO_UUID,
    DEMO_SEED_IMAGE_UUID,
    DEMO_SESSION_UUID,
    DEMO_STARTING_VM_UUID,
    DEMO_STOPPED_VM_UUID,
    DEMO_VM_UUID,
    demo_data,
)
from zstack_sim.generate import generate
from zstack_sim.server import Simulator, ThreadedSimulator, run_in_thread

__all__ = [
    "DEMO_ACCESS_KEY_ID",
    "DEMO_ACCESS_KEY_SECRET",
    "DEMO_ACCOUNT_NAME",
    "DEMO_ACCOUNT_PASSWORD",
    "DEMO_ACCOUNT_UUID",
    "DEMO_EMPTY_VM_UUID",
    "DEMO_IMAGE_UUIDS",
    "DEMO_ISO_UUID",
    "DEMO_MISSING_VM_UUID",
    "DEMO_MN_UUID",
    "DEMO_SECOND_ISO_UUID",
    "DEMO_SEED_IMAGE_UUID",
    "DEMO_SESSION_UUID",
    "DEMO_STARTING_VM_UUID",
    "DEMO_STOPPED_VM_UUID",
    "DEMO_VM_UUID",
    "DataError",
    "SimData",
    "Simulator",
    "ThreadedSimulator",
    "demo_data",
    "generate",
    "load_data",
    "run_in_thread",
]
