"""Real-time scheduling for the processes on the tick path.

Why: on a shared machine a tick waits for the CPU, not for the network. In the Redis failover
drill (two CPUs, about fourteen busy processes) the feed and the subscriber were runnable but
off the CPU for up to 90 ms while the order path caught up after a switch; the loop watchdog
saw those stalls inside uvloop's C run loop and between two clock reads in plain Python code.
Under ``SCHED_FIFO`` a runnable tick-path thread preempts every normal (``SCHED_OTHER``) task at
once, so what is left is the tick path's own work. It is the usual set-up of market-data
handlers (``chrt -f``), here as configuration (``[sched]`` in the mesh file).

What it costs, and the guard rails:

* A ``SCHED_FIFO`` thread that never blocks would starve the normal tasks of its CPU. Every
  tick-path thread here blocks on epoll between messages, and the kernel's real-time throttle
  (``/proc/sys/kernel/sched_rt_runtime_us``, 950,000 of every 1,000,000 µs by default) keeps
  5 % of each CPU for normal tasks even then.
* It needs ``CAP_SYS_NICE`` (root) or an ``RLIMIT_RTPRIO`` at least the priority (``rtprio``
  in ``/etc/security/limits.conf``). Without either the node refuses to start with a
  :class:`ConfigError` that says so: an operator who asked for real time must not get a node
  that silently runs without it.
* Real-time threads free to use every CPU can, in a burst, hold all of them at once, and then
  no normal task runs: with the feed, the recovery node and the subscriber real-time and
  unpinned, the order backends missed their 60 ms heartbeats in the Redis drill and failed
  over 4-10 times a run. Hence ``[sched] cpus``: the tick path keeps to its own CPU(s), the
  rest of the machine keeps the others; and only the feed and the subscriber by default (the
  recovery node serves gap fills, not the live path).
* The policy is set on every thread that exists and is inherited by every thread started
  later (ZeroMQ's I/O thread, ``asyncio.to_thread`` workers), so call :func:`apply_realtime`
  first thing in the process, before the event loop and the ZeroMQ context.
"""

from __future__ import annotations

import contextlib
import logging
import os

from bus.config import NodeKind, SchedSection
from protocols.errors import ConfigError

__all__ = ["StartupNice", "apply_realtime", "apply_sched", "policy_of", "realtime_permitted",
           "renice_permitted", "start_niced"]

log = logging.getLogger(__name__)

_KEY = "sched.realtime_priority"
_FIX = ("run the node as root, give its python CAP_SYS_NICE (setcap cap_sys_nice+ep), raise "
        "its rtprio limit (/etc/security/limits.conf), or set realtime_priority = 0")


def apply_realtime(priority: int, *, cpus: tuple[int, ...] = (),
                   what: str = "this process") -> None:
    """Run every thread of this process under ``SCHED_FIFO`` at ``priority`` (1-99), on
    ``cpus`` only if given.

    ``priority`` 0 leaves the scheduling as it is (``cpus`` too). Raises
    :class:`ConfigError` when the priority is out of range, a CPU does not exist here, the
    platform has no ``SCHED_FIFO`` or the process may not use it.
    """
    if priority == 0:
        return
    if not 1 <= priority <= 99:
        raise ConfigError(_KEY, f"must be 0 (off) or 1-99, got {priority}", "e.g. 40")
    if not hasattr(os, "sched_setscheduler"):
        raise ConfigError(_KEY, f"{what}: this platform has no SCHED_FIFO", "set it to 0")
    if cpus:
        _pin(cpus, what)
    param = os.sched_param(priority)
    try:
        for tid in _threads():
            os.sched_setscheduler(tid, os.SCHED_FIFO, param)
    except PermissionError as exc:
        raise ConfigError(_KEY, f"{what} may not use SCHED_FIFO priority {priority} "
                          f"({exc.strerror})", _FIX) from None
    log.info("%s runs under SCHED_FIFO, priority %d, on CPUs %s", what, priority,
             sorted(os.sched_getaffinity(0)))


def apply_sched(sched: SchedSection, kind: NodeKind, *, what: str) -> None:
    """What a mesh file's ``[sched]`` asks for a process of ``kind`` (the nodes, through
    ``run_node``; a subscriber application, first thing in its process)."""
    apply_realtime(sched.priority_for(kind), cpus=sched.cpus, what=what)


def _pin(cpus: tuple[int, ...], what: str) -> None:
    """Keep every thread of the process on ``cpus`` (the module's docstring: why)."""
    available = os.sched_getaffinity(0)
    missing = sorted(set(cpus) - available)
    if missing:
        raise ConfigError("sched.cpus", f"{what}: CPU {missing} is not available here (this "
                          f"process may use {sorted(available)})", "list CPUs that exist")
    for tid in _threads():
        os.sched_setaffinity(tid, cpus)


_CAP_SYS_NICE = 23  # linux/capability.h
STARTUP_NICE = 19  # how much nicer a starting node runs (the lowest priority there is)


class StartupNice:
    """A process started at a lower priority (:func:`start_niced`), until :meth:`restore`."""

    def __init__(self, normal: int | None) -> None:
        self.normal = normal  # the nice value to return to; None: never lowered

    @property
    def lowered(self) -> bool:
        return self.normal is not None

    def restore(self) -> None:
        """Every thread back to the normal priority (idempotent; a no-op if never lowered)."""
        normal, self.normal = self.normal, None
        if normal is not None:
            _renice_threads(normal)
            log.info("start-up over: back to nice %d", normal)


def start_niced(by: int = STARTUP_NICE) -> StartupNice:
    """Run this process (every thread it has and will start) ``by`` nice levels lower until
    :meth:`StartupNice.restore`, if it may raise its priority back then: root with
    ``CAP_SYS_NICE``, or an ``RLIMIT_NICE`` that allows the normal value. Otherwise (or
    without ``setpriority``) nothing changes. Call it first thing, before threads exist.

    Why: a node restarted after a crash (the backend drill restarts the killed active at
    once) spends its first fraction of a second of CPU importing and connecting, exactly
    while its peer takes over and every client retries (docs/BENCHMARKS.md, "Issue 10:
    backend failover"). A starting node serves nobody, so it yields."""
    if not hasattr(os, "setpriority"):
        return StartupNice(None)
    normal = os.getpriority(os.PRIO_PROCESS, 0)
    if not renice_permitted(normal):
        return StartupNice(None)
    _renice_threads(min(19, normal + by))
    return StartupNice(normal)


def _renice_threads(nice: int) -> None:
    """Every thread of this process at ``nice`` (the value is per thread on Linux)."""
    for tid in _threads():
        with contextlib.suppress(ProcessLookupError):  # a thread that ended meanwhile
            os.setpriority(os.PRIO_PROCESS, tid, nice)


def renice_permitted(nice: int) -> bool:
    """Whether this process may set its nice value back down to ``nice`` (raise its
    priority): ``CAP_SYS_NICE``, or an ``RLIMIT_NICE`` that allows it."""
    if _has_capability(_CAP_SYS_NICE):
        return True
    import resource

    soft, _hard = resource.getrlimit(resource.RLIMIT_NICE)
    # RLIMIT_NICE is the ceiling 20 - nice (setrlimit(2)).
    return soft == resource.RLIM_INFINITY or 20 - nice <= soft


def realtime_permitted(priority: int) -> bool:
    """Whether :func:`apply_realtime` at ``priority`` would be allowed here: the effective
    capability ``CAP_SYS_NICE`` or an ``RLIMIT_RTPRIO`` of at least ``priority``."""
    if not hasattr(os, "sched_setscheduler"):
        return False
    if _has_capability(_CAP_SYS_NICE):
        return True
    import resource

    soft, _hard = resource.getrlimit(resource.RLIMIT_RTPRIO)
    return soft == resource.RLIM_INFINITY or soft >= priority


def _has_capability(bit: int) -> bool:
    """From ``CapEff`` in /proc/self/status (root without the capability does not have it)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> bit & 1)
    except OSError:
        pass
    return False


def policy_of(pid: int = 0) -> str:
    """``"fifo:40"``, ``"rr:10"`` or ``"other"``, then `` cpus 1`` if the process may not use
    every CPU: the policy of a process (0: this one) as the kernel reports it (for stats files
    and drill reports)."""
    policy = os.sched_getscheduler(pid)
    text = "other"
    if policy in (os.SCHED_FIFO, os.SCHED_RR):
        name = "fifo" if policy == os.SCHED_FIFO else "rr"
        text = f"{name}:{os.sched_getparam(pid).sched_priority}"
    cpus = os.sched_getaffinity(pid)
    if len(cpus) < (os.cpu_count() or len(cpus)):
        text += " cpus " + ",".join(str(c) for c in sorted(cpus))
    return text


def _threads() -> list[int]:
    """Thread ids of this process (0, the calling thread, where /proc is missing)."""
    try:
        return [int(tid) for tid in os.listdir("/proc/self/task")]
    except OSError:
        return [0]
