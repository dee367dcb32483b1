"""Lead store benchmark: import rows/s, claims/s, completions/s and Redis memory per 1M leads.

Starts its own redis-server on loopback, imports a generated CSV of `--leads` rows (numbers in the
555 exchange: never dialled here), then drains the hopper with several concurrent claimers (as
several nodes would), completes every attempt (history + CDR stream), and measures memory from
`INFO memory` before and after. Memory per 1M leads is extrapolated linearly from the run.

    python -m bench.leads [--leads 200000] [--claimers 4] [--batch 10]

Writes bench/results/leads.json and prints a table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from dialer.leads import AttemptRecord, Lead
from dialer.leads_redis import RedisLeadStore
from dialer.logging import configure_logging
from dialer.outcomes import Outcome
from tests.support.servers import RedisServer

RESULTS = Path(__file__).resolve().parent / "results" / "leads.json"
AREA_CODES = ("212", "312", "303", "206", "415", "617", "702", "503", "404", "713", "305", "602", "612",
              "615", "704", "801", "813", "816", "901", "919", "916", "202", "214", "215", "216")


def write_csv(path: Path, n: int) -> None:
    """n distinct numbers 555-0000..9999 across area codes, with typical free columns."""
    if n > len(AREA_CODES) * 10_000:
        raise SystemExit(f"--leads: at most {len(AREA_CODES) * 10_000}")
    with path.open("w", encoding="utf-8") as fh:
        fh.write("number,first_name,last_name,account_id,plan\n")
        for i in range(n):
            area, line = AREA_CODES[i // 10_000], i % 10_000
            fh.write(f"({area}) 555-{line:04d},First{i % 997},Last{i % 991},ACC-{i:08d},gold\n")


async def used_memory(store: RedisLeadStore) -> int:
    info: dict[str, Any] = await store.redis.info("memory")
    return int(info["used_memory"])


async def run(n: int, claimers: int, batch: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        lead_file = directory / "leads.csv"
        write_csv(lead_file, n)
        server = RedisServer(directory)
        server.start()
        try:
            stores = [RedisLeadStore.from_url(server.url, node_id=f"node{i}", lease_s=600.0)
                      for i in range(claimers)]
            store = stores[0]
            mem0 = await used_memory(store)

            t0 = time.perf_counter()
            with lead_file.open("rb") as fh:
                report = await store.import_csv("bench", fh)
            import_s = time.perf_counter() - t0
            assert report.imported == n, report
            mem_imported = await used_memory(store)

            claimed: list[list[Lead]] = [[] for _ in stores]

            async def drain(i: int) -> None:
                s = stores[i]
                while leads := await s.claim("bench", batch, 1.0):
                    claimed[i].extend(leads)

            t0 = time.perf_counter()
            await asyncio.gather(*(drain(i) for i in range(claimers)))
            claim_s = time.perf_counter() - t0
            all_claimed = [lead for per in claimed for lead in per]
            assert len(all_claimed) == len({lead.lead_id for lead in all_claimed}) == n

            # Single-lead claims, the engine's worst case (one lead per tick per campaign), on a sample.
            single_n = min(n, 20_000)
            for lead in all_claimed[:single_n]:
                await store.schedule_callback("bench", lead.lead_id, 2.0)
            # A callback on a leased lead takes effect at completion: these come back due at 2.0.
            t0 = time.perf_counter()

            async def complete(i: int) -> None:
                s = stores[i]
                for lead in claimed[i]:
                    rec = AttemptRecord(f"call-{lead.lead_id}", lead.lead_id, "bench", lead.number,
                                        lead.attempts + 1, 1.0, dialled_at=1.0, ended_at=20.0,
                                        outcome=Outcome.NO_ANSWER, sip_status=487, reason="ring_timeout")
                    await s.complete(lead, rec, retry_at=None)

            await asyncio.gather(*(complete(i) for i in range(claimers)))
            complete_s = time.perf_counter() - t0
            mem_attempted = await used_memory(store)

            t0 = time.perf_counter()
            got = 0
            while await store.claim("bench", 1, 2.0):
                got += 1
            single_s = time.perf_counter() - t0
            assert got == single_n, got
            for s in stores:
                await s.close()
        finally:
            server.stop()

    per_lead = (mem_imported - mem0) / n
    per_lead_attempted = (mem_attempted - mem0) / n
    return {
        "leads": n,
        "claimers": claimers,
        "claim_batch": batch,
        "import_rows_per_s": round(n / import_s),
        "claims_per_s_batched": round(n / claim_s),
        "claims_per_s_single": round(single_n / single_s),
        "completions_per_s": round(n / complete_s),
        "redis_bytes_per_lead_imported": round(per_lead),
        "redis_mb_per_1m_leads_imported": round(per_lead * 1_000_000 / 2**20),
        "redis_bytes_per_lead_one_attempt": round(per_lead_attempted),
        "redis_mb_per_1m_leads_one_attempt": round(per_lead_attempted * 1_000_000 / 2**20),
        "python": platform.python_version(),
        "machine": platform.machine(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.leads", description=__doc__.splitlines()[0])
    parser.add_argument("--leads", type=int, default=200_000, help="leads to import (default 200000)")
    parser.add_argument("--claimers", type=int, default=4, help="concurrent claiming stores (default 4)")
    parser.add_argument("--batch", type=int, default=10, help="leads per claim (default 10)")
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"JSON results (default {RESULTS})")
    args = parser.parse_args(argv)
    if args.leads < 1 or args.claimers < 1 or args.batch < 1:
        parser.error("--leads, --claimers and --batch must be at least 1")
    configure_logging("warning", stream=sys.stderr)
    result = asyncio.run(run(args.leads, args.claimers, args.batch))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    width = max(len(k) for k in result)
    for key, value in result.items():
        print(f"{key:<{width}}  {value:>12}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
