"""The README's client example runs against a real mesh and prints ticks."""

from __future__ import annotations

import asyncio
import re
from dataclasses import replace
from pathlib import Path

import pytest

from nodes.servers.redis_server import RedisProcess
from tests.nodes.harness import mesh
from tests.support import scaled, wait_until

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_example() -> str:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    return next(b for b in blocks if "Subscriber(opts)" in b)


@pytest.mark.timeout(60)
def test_readme_subscriber_example_runs(redis_server: RedisProcess) -> None:
    code = readme_example()
    assert len([ln for ln in code.splitlines() if ln.strip()]) <= 11
    lines: list[str] = []

    def record(*args: object) -> None:  # the example's print, kept line by line
        lines.append(" ".join(map(str, args)))

    async def main() -> None:
        async with mesh(redis_server, symbols=("EURUSD", "XAUUSD", "GBPUSD")) as m:
            # The example uses the default mesh; point it at this test's mesh instead.
            src = code.replace("load_config(None)", "CFG").replace("asyncio.run(main())", "")
            # The harness's subscriber holds the UDP port: this one listens on TCP only.
            cfg = replace(m.cfg, subscriber=replace(m.cfg.subscriber, udp_bind=""))
            env: dict[str, object] = {"CFG": cfg, "print": record}
            exec(compile(src, "README.md", "exec"), env)
            task = asyncio.create_task(env["main"]())  # type: ignore[operator]
            await wait_until(lambda: len(lines) > 100 or task.done(), 5, "100 ticks printed")
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            if not task.cancelled():
                task.result()  # the example ended by itself: its error, not "too few lines"
    asyncio.run(main())
    assert len(lines) > 100
    assert {ln.split()[0] for ln in lines} == {"EURUSD", "XAUUSD"}


@pytest.mark.timeout(60)
def test_readme_order_example_runs(redis_server: RedisProcess,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    from tests.nodes.orders.test_backend import pair, wait_active

    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    code = next(b for b in blocks if "OrderClient(" in b)

    async def main() -> None:
        async with pair(redis_server, real_executor=True) as p:
            from protocols.orders.binary_star import Role
            await wait_active(p.node(Role.PRIMARY))
            cfg = replace(p.cfg, orders=replace(p.cfg.orders, clients=(
                p.ends[Role.PRIMARY].clients, p.ends[Role.BACKUP].clients)))
            src = code.replace("load_config(None)", "CFG").replace("asyncio.run(main())", "")
            env: dict[str, object] = {"CFG": cfg}
            exec(compile(src, "README.md", "exec"), env)
            async with asyncio.timeout(scaled(10)):
                await env["main"]()  # type: ignore[operator]
    asyncio.run(main())
    placed, amended = capsys.readouterr().out.splitlines()
    order_id, state, report = placed.split()
    assert state == "ROUTED" and report == "FILLED" and order_id.startswith("O")
    assert amended.split() == ["ROUTED", "CANCELLED"]


def test_readme_mesh_file_is_valid() -> None:
    import tomllib

    from bus.config import parse_config

    ea, mesh, ha, history = (parse_config(tomllib.loads(block)) for block in
                             re.findall(r"```toml\n(.*?)```", README.read_text(), re.S))
    assert (mesh.orders.fill_lots, mesh.orders.amend_timeout_ms) == (2.0, 500.0)
    assert history.history.store == "clickhouse" and len(history.history.clickhouse) == 2
    assert [f.name for f in mesh.feeds] == ["sim", "mt5"]
    assert mesh.sched.priority_for("feed") == 40 and mesh.sched.cpus == (1,)
    assert len(ha.redis.sentinels) == 3 and ha.redis.orders_role().master == "tickmesh-rtss"
    # The EA's service set-up: a real terminal, its path, account and server.
    (instance,) = ea.ea
    assert ea.orders.execution == "ea" and instance.feed == "mt5"
    assert instance.terminal == "mt5" and instance.terminal_path.endswith("terminal64.exe")
    assert instance.login > 0 and instance.server
