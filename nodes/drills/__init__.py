"""The drills library: what benchmarks and failure drills share.

Every script under ``scripts/`` that measures something (``bench-ticks``, ``bench-orders``,
``drill-backend-crash``, ``drill-redis-failover``, ``soak-rss``) is built from these modules,
and so are the next drills (ClickHouse, EA, gateway, the combined drill):

``nodes.drills.procs``
    Child processes. :class:`~nodes.drills.procs.Children` starts each child in its own
    session and stops all of them (SIGTERM, then SIGKILL) on exit, error or Ctrl-C;
    :class:`~nodes.drills.procs.Node` is one CLI node that a drill kills and restarts;
    :class:`~nodes.drills.procs.LineChild` / :class:`~nodes.drills.procs.AsyncLineChild`
    speak the JSON-line protocol to a measuring child, and
    :func:`~nodes.drills.procs.child_setup` / :func:`~nodes.drills.procs.stdin_lines` are the
    child's side of it. :class:`~protocols.errors.DrillError`: the drill could not run.
``nodes.drills.ports``
    Ports for children that bind themselves (ZeroMQ endpoints in a mesh file, UDP), and
    :func:`~nodes.drills.ports.bind_loopback` for a socket bound in this process.
``nodes.drills.measure``
    Latency summaries (the one nearest-rank percentile of ``protocols.stats``), CPU and
    memory of processes.
``nodes.drills.report``
    The console table, the markdown report, the JSON line, the machine's description, and
    :func:`~nodes.drills.report.conclude` / :func:`~nodes.drills.report.drive`, the end and the
    main of a drill or a benchmark.
``nodes.drills.orders``
    Order load (paced ``OrderClient`` placements) and the count of what happened to every
    acknowledged order (lost, duplicated, mismatched), shared by the order drills;
    :class:`~nodes.drills.orders.BusyTap`, the BUSY rejects a client decoded and when.

Blocking where a drill's orchestration is synchronous (``Children``, ``LineChild``); asyncio
where it is not (``AsyncLineChild``, ``nodes.drills.orders``). Nothing here is used by a node
in production.
"""
