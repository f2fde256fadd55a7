"""History nodes: the historian and the ``tickmesh history`` command line (bars, ticks, reports)."""
