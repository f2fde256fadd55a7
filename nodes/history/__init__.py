"""History nodes: the ``tickmesh history`` command line (bars, ticks, reports)."""
