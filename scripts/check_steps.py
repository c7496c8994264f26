"""How scripts/gpu_check.py runs its steps: each isolated and time-bounded, and what the CuPy
tests of its ``tests`` step did.

A step is a function returning ``(result, record)``; :func:`run_step` turns an exception or a
run past the step's budget into a failed record (``{"ok": False, "error": ..., "traceback":
...}``) so that the next steps run and the report is written. An in-process step is interrupted
by an alarm (SIGALRM, main thread; elsewhere the budget is checked after the step); a child
process (:func:`run_child`) is killed with its own children at its limit.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
import traceback
import xml.etree.ElementTree as ET

# --- running a step: isolated, time-bounded, recorded --------------------------------------------

class StepTimeout(Exception):
    """An in-process step ran past its budget (raised by the alarm)."""


def _alarm(seconds):
    """Raise StepTimeout in this thread after ``seconds``; a no-op where signals cannot be used
    (not the main thread, or no SIGALRM), where the budget is checked after the step instead."""
    def ring(signum, frame):
        raise StepTimeout(f"ran past its budget of {seconds:g} s")

    try:
        previous = signal.signal(signal.SIGALRM, ring)
    except (AttributeError, ValueError):
        return lambda: None
    signal.setitimer(signal.ITIMER_REAL, seconds)

    def cancel():
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    return cancel


def run_step(name, budget, fn, *args, passthrough=()):
    """``fn(*args)`` (which returns ``(result, record)``) within ``budget`` seconds: its result
    and record; an exception (other than ``passthrough``) or a timeout gives
    ``(None, {"ok": False, "error": ...})`` instead of ending the check."""
    t0 = time.perf_counter()
    try:
        cancel = _alarm(budget)
        try:
            result, record = fn(*args)
        finally:
            cancel()
    except passthrough:
        raise
    except Exception as exc:            # noqa: BLE001 - every failure is the step's record
        error = f"{type(exc).__name__}: {exc}"
        if isinstance(exc, StepTimeout):
            error = (f"{name} {exc} (gpu_check.BUDGETS): the device may be hung or far slower "
                     "than expected; look at nvidia-smi")
        return None, {"ok": False, "seconds": time.perf_counter() - t0, "error": error,
                      "traceback": traceback.format_exc()[-4000:]}
    seconds = time.perf_counter() - t0
    if seconds > budget:
        record = {**record, "ok": False, "error": f"{name} took {seconds:.0f} s, past its budget "
                  f"of {budget:g} s (gpu_check.BUDGETS)"}
    return result, record


def run_child(args, timeout, **kwargs):
    """``(returncode, stdout, stderr)`` of a child process in its own session, killed with
    its own children (mpiexec, pytest's) when it runs past ``timeout`` s (StepTimeout)."""
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, **kwargs)
    try:
        out, err = proc.communicate(timeout=timeout)
    except BaseException as exc:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        proc.communicate()
        if isinstance(exc, subprocess.TimeoutExpired):
            raise StepTimeout(f"ran past its budget of {timeout:g} s (its processes were "
                              "killed)") from None
        raise
    return proc.returncode, out, err


# --- the tests step: which GPU its child sees, what the backend's tests did -------------------

def cuda_index(device: str) -> int:
    """N of ``cuda:N`` (0 for ``gpu``, ``cuda``, ``cupy``)."""
    match = re.fullmatch(r"cuda:(\d+)", device.strip().lower())
    return int(match.group(1)) if match else 0


def child_gpu(index: int) -> str:
    """What ``CUDA_VISIBLE_DEVICES`` a child needs to see ``cuda:index`` as its only GPU: the
    index, or the index-th entry of this process's own ``CUDA_VISIBLE_DEVICES``."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return str(index)
    entries = [e.strip() for e in visible.split(",") if e.strip()]
    if index >= len(entries):
        raise ValueError(f"cuda:{index} is not among CUDA_VISIBLE_DEVICES={visible!r}: ask for "
                         f"cuda:0 to cuda:{len(entries) - 1}, or widen CUDA_VISIBLE_DEVICES")
    return entries[index]


# a skip of a backend test that is not the backend's fault: an optional library not installed
OPTIONAL_SKIP = re.compile(r"(\S+) is not installed")


def _is_backend_test(name: str, test_backend: str) -> bool:
    """Whether a test id is parametrised with ``test_backend`` (``test_x[cupy-chunks-of-4]``)."""
    match = re.search(r"\[(.*)\]$", name)
    return bool(match) and test_backend in match.group(1).split("-")


def count_backend_tests(junit: str, test_backend: str):
    """``(counts, skip reasons)`` of the ``test_backend`` tests in a JUnit XML report; a skip
    of an optional library other than the backend's own is counted as ``optional_skipped``."""
    counts = {"passed": 0, "failed": 0, "skipped": 0, "optional_skipped": 0}
    reasons = []
    for case in ET.fromstring(junit).iter("testcase"):
        if not _is_backend_test(case.get("name", ""), test_backend):
            continue
        if case.find("failure") is not None or case.find("error") is not None:
            counts["failed"] += 1
        elif (skip := case.find("skipped")) is not None:
            reason = skip.get("message", "")
            optional = OPTIONAL_SKIP.match(reason)
            if optional and optional.group(1).lower() != test_backend:
                counts["optional_skipped"] += 1
            else:
                counts["skipped"] += 1
                reasons.append(reason)
        else:
            counts["passed"] += 1
    return counts, sorted(set(reasons))
