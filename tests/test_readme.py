"""The README's client example runs against a real mesh and prints ticks."""

from __future__ import annotations

import asyncio
import re
from dataclasses import replace
from pathlib import Path

import pytest

from nodes.servers import RedisProcess
from tests.nodes.harness import mesh
from tests.support import scaled

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_example() -> str:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    return next(b for b in blocks if "Subscriber(opts)" in b)


@pytest.mark.timeout(60)
def test_readme_subscriber_example_runs(redis_server: RedisProcess,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    code = readme_example()
    assert len([ln for ln in code.splitlines() if ln.strip()]) <= 11
    async def main() -> None:
        async with mesh(redis_server, symbols=("EURUSD", "XAUUSD", "GBPUSD")) as m:
            # The example uses the default mesh; point it at this test's mesh instead.
            src = code.replace("load_config(None)", "CFG").replace("asyncio.run(main())", "")
            # The harness's subscriber holds the UDP port: this one listens on TCP only.
            cfg = replace(m.cfg, subscriber=replace(m.cfg.subscriber, udp_bind=""))
            env: dict[str, object] = {"CFG": cfg}
            exec(compile(src, "README.md", "exec"), env)
            task = asyncio.create_task(env["main"]())  # type: ignore[operator]
            await asyncio.sleep(scaled(1.0))
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    asyncio.run(main())
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) > 100
    assert {ln.split()[0] for ln in lines} == {"EURUSD", "XAUUSD"}
