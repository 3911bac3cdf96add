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
from faregate.errors import ConfigError, FaregateError, StartupError
from faregate.server import runner
from faregate.store.protocols import StoreUnavailable
from faregate.telemetry.metrics_share import SharedMetrics

log = logging.getLogger("faregate.workers")
# What a worker writes on its ready pipe: READY once it listens; or, when it cannot start (a bad
# config found as it builds, a store it cannot write), one of these and the message, which the
# supervisor says once for all its workers (each would fail alike), with the config file's line.
READY = b"1"
CONFIG_REFUSED = b"C"
START_FAILED = b"S"
# A pipe write of no more than this is whole (POSIX PIPE_BUF): the supervisor reads it in one go.
MAX_REFUSAL_BYTES = 4096


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

        listening = False

        def ready() -> None:
            nonlocal listening
            listening = True
            os.write(seat.ready_fd, READY)
            os.close(seat.ready_fd)

        try:
            _run_worker(settings, announce, ready, seat)
        except StartupError as exc:
            if listening:
                raise
            # Said once by the supervisor, for every worker that fails alike (server/workers.py).
            os.write(seat.ready_fd, refusal(exc))
            code = 2
        else:
            code = 0
    except StartupError as exc:  # once it listened, no supervisor waits for its word
        print(f"faregate: worker {seat.index}: {exc}", file=sys.stderr)
        code = 2
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


def refusal(exc: StartupError) -> bytes:
    """What the ready pipe says of a worker that cannot start: its kind and message, whole."""
    kind = CONFIG_REFUSED if isinstance(exc, ConfigError) else START_FAILED
    return (kind + str(exc).encode())[:MAX_REFUSAL_BYTES]


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
