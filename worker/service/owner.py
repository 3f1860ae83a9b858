"""A worker that a command started (`producer tag`) stops when that command is gone.

The command passes its process id (TAGGER_OWNER_PID). The worker's main process asks Linux for a
SIGTERM when its parent dies (PR_SET_PDEATHSIG: Celery's warm shutdown), and a thread notices
the parent changed (a death before the request, other systems) and, if the warm shutdown takes
longer than ``GRACE``, kills the worker's process group.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
import threading
import time

log = logging.getLogger(__name__)
PR_SET_PDEATHSIG = 1
GRACE = 30.0  # seconds a warm shutdown may take once nobody waits for the results
POLL = 0.5


def stop_with(owner_pid: int) -> None:
    """In the worker's main process, before any pool process is forked."""
    if not owner_pid:
        return
    armed = sys.platform == "linux" and _death_signal(signal.SIGTERM)
    # Checked after the request: a parent that died before it would never send the signal.
    armed = armed and os.getppid() == owner_pid
    threading.Thread(target=_watch, args=(owner_pid, armed), name="owner", daemon=True).start()


def _death_signal(sig: int) -> bool:
    libc = ctypes.CDLL(None, use_errno=True)
    return int(libc.prctl(PR_SET_PDEATHSIG, int(sig))) == 0


def _watch(owner_pid: int, armed: bool) -> None:
    while os.getppid() == owner_pid:
        time.sleep(POLL)
    log.warning("the command that started this worker (pid %d) is gone: stopping", owner_pid)
    if not armed:
        os.kill(os.getpid(), signal.SIGTERM)  # what the death signal would have done
    time.sleep(GRACE)
    log.error("still running %.0fs after its owner went: killing the worker's processes", GRACE)
    if os.getpgid(0) == os.getpid():  # our own group (the command started us in a new session)
        os.killpg(0, signal.SIGKILL)
    os.kill(os.getpid(), signal.SIGKILL)
