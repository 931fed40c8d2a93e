"""Large imports (hundreds of thousands of entries) show progress and stay idempotent. Marked slow:
run with `make test-slow`."""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest

from tests.integration import helpers

ROWS = 300_000


@pytest.mark.slow
def test_large_openssl_index_import_shows_progress_and_is_idempotent(run, data_dir: Path, tmp_path: Path) -> None:
    rng = random.Random(6960)
    serials = list(dict.fromkeys(rng.getrandbits(120) | 1 << 119 for _ in range(ROWS)))  # random order, as issued
    index = tmp_path / "index.txt"
    with index.open("w") as out:
        for i, serial in enumerate(serials):
            if i % 10 == 0:
                out.write(f"R\t491231235959Z\t250101000000Z,superseded\t{serial:X}\tunknown\t/CN=d{i}\n")
            else:
                out.write(f"V\t491231235959Z\t\t{serial:X}\tunknown\t/CN=d{i}\n")
    run("ca", "create", "fleet")
    started = time.monotonic()
    first = run("import", "fleet", "--openssl-index", index, "--progress")
    took = time.monotonic() - started
    assert f"added {len(serials)}, updated 0, unchanged 0" in first.stdout
    assert "importing into fleet: 10000 entries read" in first.stderr
    assert f"importing into fleet: {len(serials) // 10000 * 10000} entries read" in first.stderr
    assert "importing into fleet: 10000 entries written" in first.stderr
    assert f"importing into fleet: {len(serials)} entries written" in first.stderr
    assert took < 300, f"import of {len(serials)} rows took {took:.0f} s"

    again = run("import", "fleet", "--openssl-index", index)
    assert f"added 0, updated 0, unchanged {len(serials)}" in again.stdout

    counts = helpers.store_counts(data_dir)
    assert counts["pending"] == len(serials)
    status = run("status", "fleet", f"{serials[0]:X}")
    assert "revoked" in status.stdout and "superseded" in status.stdout
