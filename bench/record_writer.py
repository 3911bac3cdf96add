"""What writing one request record costs the gateway's process: the embedded store's insert, with
request ids as the gateway makes them (time first) or as it made them before (random), and with or
without the index of created_at alone that migration 18 dropped.

Each case opens a fresh SQLite store (every migration), writes `--records` records in batches of
the writer's size (512, one transaction each) as telemetry/records.py does, and reports the
process's CPU per record (user + system: the event loop's thread and aiosqlite's), the kernel's
share, and the read and write system calls per record (/proc/self/io). The records are
store_cost.py's (1 in 20 with a fallback), named as the case says.

Random ids put each record's entry of the unique request_id index at a random leaf: once that index
outgrows SQLite's page cache (2 MB by default), a record reads a page of it and the transaction
writes it back. Ids that begin with the time append at its end.

Usage: python bench/record_writer.py [--records 200000] [--batch 512]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
from pathlib import Path

from faregate.server.exchange import new_request_id
from faregate.server.random_ids import random_hex
from faregate.store.sqlite.store import SQLiteStore
from store_cost import request_records

CREATED_AT_INDEX = "CREATE INDEX request_records_created_at ON request_records (created_at)"


def old_request_id(_: int) -> str:
    """The format before the time came first: "req_" + 24 random hex digits."""
    return "req_" + random_hex(12)


def time_first_id(_: int) -> str:
    return new_request_id()


def io_calls() -> tuple[int, int]:
    fields = dict(line.split(": ") for line in Path("/proc/self/io").read_text().splitlines())
    return int(fields["syscr"]), int(fields["syscw"])


async def one_case(time_ordered: bool, created_at_index: bool, records: int, batch: int) -> dict[str, float]:
    make_id = time_first_id if time_ordered else old_request_id
    work = Path(tempfile.mkdtemp(prefix="faregate-record-writer-"))
    store = await SQLiteStore.open(work)
    try:
        if created_at_index:
            await store._conn.execute(CREATED_AT_INDEX)
        batches = [request_records(batch, make_id) for _ in range(records // batch)]
        times0, (reads0, writes0) = os.times(), io_calls()
        for chunk in batches:
            await store.insert_records(chunk)
        times1, (reads1, writes1) = os.times(), io_calls()
        written = len(batches) * batch
        assert await store.count_records() == written
    finally:
        await store.close()
    user, system = times1.user - times0.user, times1.system - times0.system
    return {
        "us": (user + system) * 1e6 / written,
        "kernel_us": system * 1e6 / written,
        "reads": (reads1 - reads0) / written,
        "writes": (writes1 - writes0) / written,
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=512)
    args = parser.parse_args()
    print(f"{args.records:,} records in batches of {args.batch}, load {os.getloadavg()[0]:.2f}")
    print("| request ids | created_at index | CPU µs/record | of it kernel | reads/record | writes/record |")
    print("|---|---|---:|---:|---:|---:|")
    cases = [(False, True), (True, True), (True, False)]
    for time_ordered, index in cases:
        r = await one_case(time_ordered, index, args.records, args.batch)
        print(
            f"| {'time first' if time_ordered else 'random'} | {'yes' if index else 'no'} | {r['us']:.1f} |"
            f" {r['kernel_us']:.1f} | {r['reads']:.2f} | {r['writes']:.2f} |"
        )


if __name__ == "__main__":
    asyncio.run(main())
