"""The provider simulator: a real OpenAI-compatible HTTP server with scripted latency, answers and faults.

Tests, the demo and the benchmarks use it in place of real providers:

    async with await start(parse_script({"defaults": {"answer": {"lorem": 20}}})) as sim:
        client = AsyncOpenAI(base_url=sim.base_url, api_key="x")
"""

from faregate.sim.script import FAULTS, Behaviour, Faults, Script, load_script, parse_script
from faregate.sim.server import RunningSim, catalog_model_names, create_app, run, serve, start
from faregate.sim.simulator import Simulator

__all__ = [
    "FAULTS",
    "Behaviour",
    "Faults",
    "RunningSim",
    "Script",
    "Simulator",
    "catalog_model_names",
    "create_app",
    "load_script",
    "parse_script",
    "run",
    "serve",
    "start",
]
