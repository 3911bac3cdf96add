"""One worker of `serve --workers N`, in the process the supervisor (server/workers.py) forked:
serve on the shared port until told to stop, then leave without the supervisor's exit handlers."""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import NoReturn

from faregate.config import Settings
from faregate.errors import FaregateError
from faregate.server import runner
from faregate.store.protocols import StoreUnavailable
from faregate.telemetry.metrics_share import SharedMetrics

log = logging.getLogger("faregate.workers")


@dataclass(slots=True, frozen=True)
class Seat:
    """What a forked worker is given besides its settings."""

    index: int
    ready_fd: int  # written once when it listens
    holder: socket.socket | None  # the supervisor's hold on the port: closed in the worker
    simulated: bool
    metrics: SharedMetrics


def worker_main(seat: Seat, settings: Settings, announce: runner.Announce | None) -> NoReturn:
    """The forked worker: serve, then leave without running the supervisor's exit handlers."""
    code = 1
    try:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, signal.SIG_DFL)
        if seat.holder is not None:
            seat.holder.close()
        runner.die_with_parent()
        _name_logs(seat.index)

        def ready() -> None:
            os.write(seat.ready_fd, b"1")
            os.close(seat.ready_fd)

        _run_worker(settings, announce, ready, seat)
        code = 0
    except (FaregateError, StoreUnavailable, OSError) as exc:
        # As the CLI says a start-up failure of one process: one line (a bug keeps its traceback).
        print(f"faregate: worker {seat.index}: {_one_line(exc)}", file=sys.stderr)
        code = 2
    except BaseException:
        log.exception("worker %d failed", seat.index)
    finally:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _one_line(exc: Exception) -> str:
    if isinstance(exc, OSError) and not isinstance(exc, FaregateError):
        where = f": {exc.filename}" if exc.filename else ""
        return f"{exc.strerror or exc}{where}"
    if isinstance(exc, StoreUnavailable):
        return f"store unavailable: {exc}"
    return str(exc)


def _run_worker(
    settings: Settings, announce: runner.Announce | None, ready: Callable[[], None], seat: Seat
) -> None:
    import uvloop

    uvloop.run(
        runner.serve_gateway(
            settings,
            announce,
            on_listening=ready,
            reuse_port=True,
            simulated=seat.simulated,
            shared_metrics=seat.metrics,
            # Worker 0 logs the alerts (and alone posts them): one line per alert event, not one per worker.
            announce_alerts=seat.index == 0,
        )
    )


def _name_logs(index: int) -> None:
    """Each worker's log lines say which worker wrote them."""
    fmt = f"%(asctime)s %(levelname)s %(name)s [worker {index} pid {os.getpid()}]: %(message)s"
    for handler in logging.getLogger().handlers:
        handler.setFormatter(logging.Formatter(fmt))
