"""``--workers N``: N gateway processes sharing one port through SO_REUSEPORT.

The kernel spreads callers' connections across the processes. The parent forks before any grpc
object exists (grpc's threads do not survive a fork), then only supervises: it forwards SIGTERM and
SIGINT to the workers, and exits 0 once every worker exited 0. A worker that dies is not restarted:
the parent then stops the others and exits 1, so the process supervisor (systemd, Kubernetes) sees it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
from collections.abc import Callable

from zstack_gateway.settings import Config


def run(config: Config, serve: Callable[[Config], int]) -> int:
    """Fork ``config.workers`` processes each running ``serve(worker_config)``; supervise them."""
    children: dict[int, int] = {}
    for index in range(config.workers):
        worker = config
        if config.metrics_listen:
            host, _, port = config.metrics_listen.rpartition(":")
            worker = config.replace(metrics_listen=f"{host}:{int(port) + index}")
        pid = os.fork()
        if pid == 0:  # the worker
            code = 1
            try:
                code = serve(worker)
            finally:
                logging.shutdown()  # log lines still waiting for their batch (telemetry.logs)
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        children[pid] = index

    def forward(signum: int, _frame: object) -> None:
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    status = 0
    while children:
        try:
            pid, wait_status = os.wait()
        except ChildProcessError:
            break
        children.pop(pid, None)
        code = os.waitstatus_to_exitcode(wait_status)
        if code != 0 and status == 0:
            status = 1
            forward(signal.SIGTERM, None)  # one worker failed: stop the rest, let the supervisor act
    return status
