"""``tickmesh``: run one node of a mesh, the whole local mesh, or check a mesh file.

    tickmesh feed --name sim            start the feed named "sim" from the mesh file
    tickmesh recovery --name recovery   start a recovery service node
    tickmesh monitor                    subscribe and report per-path statistics
    tickmesh backend --role primary     one node of the order backend pair ([orders])
    tickmesh executor                   the executor: fills routed orders (simulated EA)
    tickmesh trader [--rate N]          place market orders at N/s through the order client
    tickmesh historian                  record ticks, orders and executions into history
    tickmesh gateway                    serve the chart page, WebSocket and UDF (docs/GATEWAY.md)
    tickmesh up [--for SECONDS] [--ha] [--clickhouse]
                                        every node under a supervisor (see scripts/up)
    tickmesh check-config FILE          validate a mesh file and print it
    tickmesh history bars|ticks|report  print history: bars, ticks, performance reports
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from dataclasses import asdict
from pathlib import Path

from bus.config import MeshConfig, load_config
from nodes.common import run_node, setup_logging
from nodes.history.cli import add_history_parser, run_history
from protocols.errors import ConfigError, TickmeshError

log = logging.getLogger("tickmesh")


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", "-c", help="mesh file (TOML); default: the local mesh")
    common.add_argument("--log-level", default="INFO")
    common.add_argument("--stats", type=Path, help="write node statistics (JSON) to this file")
    p = argparse.ArgumentParser(prog="tickmesh", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    f = sub.add_parser("feed", parents=[common], help="run a feed node")
    f.add_argument("--name", help="feed name in the mesh file (default: the first)")
    r = sub.add_parser("recovery", parents=[common], help="run a recovery service node")
    r.add_argument("--name", help="recovery node name (default: the first)")
    sub.add_parser("monitor", parents=[common], help="run a monitoring subscriber")
    b = sub.add_parser("backend", parents=[common], help="run one node of the order backend pair")
    b.add_argument("--role", choices=("primary", "backup"), required=True)
    sub.add_parser("executor", parents=[common], help="run the executor (the EA's trade side)")
    tr = sub.add_parser("trader", parents=[common], help="place market orders at a steady rate")
    tr.add_argument("--rate", type=float, help="orders per second (default: [orders] trader_rate)")
    sub.add_parser("historian", parents=[common],
                   help="record ticks, orders and executions into history ([history])")
    gw = sub.add_parser("gateway", parents=[common],
                        help="run a chart gateway: the page, WebSocket, UDF (docs/GATEWAY.md)")
    where = gw.add_mutually_exclusive_group()
    where.add_argument("--index", type=int, default=0,
                       help="listen on [gateway] listen[INDEX] (default 0)")
    where.add_argument("--listen", help="host:port to listen on instead")
    gw.add_argument("--name", default="", help="the gateway's name (default gw-PORT)")
    from nodes.gateway.users import add_parser as add_users_parser

    add_users_parser(gw.add_subparsers(dest="gateway_command", required=False,
                                       title="users file tools (no command: run the gateway)"))
    ea = sub.add_parser("ea", parents=[common],
                        help="run an EA instance beside a MetaTrader 5 terminal")
    ea.add_argument("--name", help="the [[ea]] entry (default: the first)")
    ea.add_argument("--spare", action="store_true",
                    help="start warm and wait: run once a line arrives on stdin (the "
                         "supervisor's pre-started replacement)")
    sub.add_parser("sim-terminal", parents=[common],
                   help="run the simulated MetaTrader 5 terminal of [terminal]")
    up = sub.add_parser("up", parents=[common], help="run the whole mesh under a supervisor")
    up.add_argument("--for", dest="duration", type=float, default=0.0,
                    help="stop after this many seconds and print a summary")
    up.add_argument("--run-dir", type=Path, default=Path("run"),
                    help="where logs, stats and the Redis data go (default: ./run)")
    up.add_argument("--redis-port", type=int, default=0,
                    help="start the local Redis on this port (default: the config's)")
    up.add_argument("--ha", action="store_true",
                    help="start a local Redis HA topology (two master groups with replicas, "
                         "three Sentinels; see scripts/run-redis-ha) instead of one Redis")
    up.add_argument("--clickhouse", action="store_true",
                    help="history on a local ClickHouse pair (two clickhouse-server processes "
                         "on free ports, see scripts/run-clickhouse) instead of a DuckDB file")
    up.add_argument("--gateways", type=int, default=1,
                    help="chart gateways to run (0-N, each on [gateway] listen[i]; default 1)")
    up.add_argument("--no-ea", action="store_true",
                    help="no EA path: the first feed simulates its ticks and the executor "
                         "its fills (default: the EA on the simulated terminal does both)")
    up.add_argument("--ea-standby", action="store_true",
                    help="a second EA instance (ea-2) on the same feed and accounts, standing "
                         "by to take over the trading")
    up.add_argument("--json", action="store_true", help="print the summary as JSON")
    chk = sub.add_parser("check-config", help="validate a mesh file and print it")
    chk.add_argument("file")
    add_history_parser(sub)
    return p


def _run_feed(cfg: MeshConfig, name: str | None, stats: Path | None) -> int:
    from nodes.ticks.feed import FeedNode

    section = cfg.feed(name) if name else cfg.feeds[0]
    return run_node(lambda stop: FeedNode(cfg, section, stats_path=stats).run(stop),
                    sched=cfg.sched, kind="feed", what=f"feed {section.name}")


def _run_recovery(cfg: MeshConfig, name: str | None, stats: Path | None) -> int:
    from nodes.ticks.recovery import RecoveryNode

    section = cfg.recovery_node(name) if name else cfg.recovery[0]
    return run_node(lambda stop: RecoveryNode(cfg, section, stats_path=stats).run(stop),
                    sched=cfg.sched, kind="recovery", what=f"recovery {section.name}")


def _run_monitor(cfg: MeshConfig, stats: Path | None) -> int:
    from nodes.ticks.monitor import MonitorNode

    return run_node(lambda stop: MonitorNode(cfg, stats_path=stats).run(stop),
                    sched=cfg.sched, kind="monitor", what="the monitor")


def _run_backend(cfg: MeshConfig, role: str, stats: Path | None) -> int:
    import asyncio
    import signal

    from bus.sched import start_niced

    # Before the imports: they are most of a start's CPU (BackendNode: until when).
    startup = start_niced()

    from nodes.orders.backend import backend_from_config
    from protocols.orders.binary_star import Role

    async def main(stop: asyncio.Event) -> int:
        node = backend_from_config(cfg, Role(role), stats, startup=startup)
        pending: set[asyncio.Task[None]] = set()

        def handover() -> None:  # kill -USR2 <pid>: operator failback/handover
            task = asyncio.create_task(node.handover())
            pending.add(task)
            task.add_done_callback(pending.discard)
        asyncio.get_running_loop().add_signal_handler(signal.SIGUSR2, handover)
        return await node.run(stop)

    return run_node(main, sched=cfg.sched, kind="backend", what=f"backend {role}")


def _run_executor(cfg: MeshConfig, stats: Path | None) -> int:
    from nodes.orders.executor import ExecutorNode

    return run_node(lambda stop: ExecutorNode(
        cfg, name=cfg.orders.executor_id, backends=tuple(cfg.orders.executor),
        stats_path=stats).run(stop), sched=cfg.sched, kind="executor",
        what="the executor")


def _run_trader(cfg: MeshConfig, rate: float | None, stats: Path | None) -> int:
    from nodes.orders.trader import TraderNode

    return run_node(lambda stop: TraderNode(cfg, rate=rate or cfg.orders.trader_rate,
                                            stats_path=stats).run(stop),
                    sched=cfg.sched, kind="trader", what="the trader")


def _run_historian(cfg: MeshConfig, stats: Path | None) -> int:
    from nodes.history.historian import Historian, open_writer

    return run_node(lambda stop: Historian(cfg, open_writer(cfg), stats_path=stats).run(stop),
                    sched=cfg.sched, kind="historian", what="the historian")


def _run_gateway(cfg: MeshConfig, index: int, listen: str | None, name: str,
                 stats: Path | None) -> int:
    from nodes.gateway.node import GatewayNode

    if listen is None:
        if not 0 <= index < len(cfg.gateway.listen):
            raise ConfigError("gateway.listen", f"has no entry {index}",
                              f"use --index 0..{len(cfg.gateway.listen) - 1} or --listen")
        listen = cfg.gateway.listen[index]
    return run_node(lambda stop: GatewayNode(cfg, listen, name, stats).run(stop),
                    sched=cfg.sched, kind="gateway", what="the gateway")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    setup_logging(getattr(args, "log_level", "INFO"))
    try:
        if args.command == "check-config":
            cfg = load_config(args.file)
            print(json.dumps(asdict(cfg), indent=2))
            return 0
        if args.command == "gateway" and args.gateway_command:
            from nodes.gateway.users import run as run_users

            return run_users(args)
        cfg = load_config(args.config)
        if args.command == "feed":
            return _run_feed(cfg, args.name, args.stats)
        if args.command == "recovery":
            return _run_recovery(cfg, args.name, args.stats)
        if args.command == "monitor":
            return _run_monitor(cfg, args.stats)
        if args.command == "backend":
            return _run_backend(cfg, args.role, args.stats)
        if args.command == "executor":
            return _run_executor(cfg, args.stats)
        if args.command == "trader":
            return _run_trader(cfg, args.rate, args.stats)
        if args.command == "historian":
            return _run_historian(cfg, args.stats)
        if args.command == "gateway":
            return _run_gateway(cfg, args.index, args.listen, args.name, args.stats)
        if args.command == "history":
            return run_history(cfg, args)
        if args.command == "ea":
            from nodes.ea.node import run_ea

            return run_ea(cfg, args.name, args.stats, spare=args.spare)
        if args.command == "sim-terminal":
            from nodes.ea.simterm import run_terminal

            return run_terminal(cfg, args.stats)
        from nodes.supervisor import run_up

        return asyncio.run(run_up(cfg, args))
    except TickmeshError as exc:
        print(f"tickmesh: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
