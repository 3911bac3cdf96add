"""Keep `pytest -m "not e2e"` a fast unit run: a test that starts a process must be marked e2e.

Two checks, so the marks cannot drift from what the tests do:
- at collection, a test that uses a fixture which starts servers (the simulator, the gateway,
  PostgreSQL, Redis) and is not marked e2e stops the run with a list of the offenders;
- while a test that is not marked e2e runs (its fixtures' setup and teardown included), starting
  any process fails it, naming the command.

In-process loopback servers (aiohttp test servers for the transport and the providers) are not
processes and stay in the unit run.
"""

from __future__ import annotations

import subprocess
from collections.abc import Generator
from typing import Any

import pytest

# Fixtures (tests/conftest.py, tests/servers.py) that start a process, directly or through another.
PROCESS_FIXTURES = frozenset({"sim", "gateway", "api_key", "postgres_server", "redis_server", "shared_urls"})

_original_init = subprocess.Popen.__init__
_unit_test: list[str] = []  # the node id of the unit test running now, if one is


def _guarded_init(self: subprocess.Popen[Any], args: Any, *rest: Any, **kwargs: Any) -> None:
    if _unit_test:
        command = args if isinstance(args, str) else " ".join(str(a) for a in args)
        raise AssertionError(
            f"{_unit_test[0]} starts a process ({command[:120]}): mark the test e2e "
            "(pytest.mark.e2e), or keep the unit test in process"
        )
    _original_init(self, args, *rest, **kwargs)


def pytest_configure(config: pytest.Config) -> None:
    previous = subprocess.Popen.__init__
    subprocess.Popen.__init__ = _guarded_init  # type: ignore[method-assign]
    config.add_cleanup(lambda: setattr(subprocess.Popen, "__init__", previous))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    unmarked = [
        item.nodeid
        for item in items
        if PROCESS_FIXTURES & set(getattr(item, "fixturenames", ()))
        and item.get_closest_marker("e2e") is None
    ]
    if unmarked:
        raise pytest.UsageError(
            "these tests start servers through their fixtures but are not marked e2e:\n  "
            + "\n  ".join(unmarked)
        )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Generator[None, None, None]:
    unit = item.get_closest_marker("e2e") is None
    if unit:
        _unit_test.append(item.nodeid)
    try:
        yield
    finally:
        if unit:
            _unit_test.clear()
