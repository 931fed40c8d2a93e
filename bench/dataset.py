"""The benchmark dataset: one CA with N serials in the inventory and every response signed in the store.

How (fast enough for millions):
1. ``pki-edge --data D ca create NAME --key K`` (the real CLI);
2. an OpenSSL-style ``index.txt`` with N random 127-bit serials, every tenth revoked (keyCompromise),
   written by :func:`write_openssl_index`; the same file later feeds the ``openssl ocsp`` reference;
3. ``pki-edge --data D import NAME --openssl-index index.txt`` (the real CLI);
4. everything signed by the product's own :class:`signer.precompute.Precomputer`, in-process, in a
   subprocess pinned to one core (``python -m bench.dataset sign``), which also times raw
   ``private_key.sign()`` of the same CA key between its batches (:class:`RawReference`), so the
   signer's efficiency is a ratio of two rates measured side by side on a noisy machine.

``python -m bench.dataset refresh`` re-signs every serial once more (a full refresh) by running the
Precomputer with its clock moved past every planned refresh.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import random
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

CA_NAME = "bench"
REVOKED_EVERY = 10  # a tenth of the serials are revoked
SERIAL_BITS = 127  # positive, 16 octets like most CAs' random serials


def pki_edge_bin() -> str:
    beside = Path(sys.executable).with_name("pki-edge")
    return str(beside) if beside.exists() else "pki-edge"


def run_cli(data: Path, *args: str | Path, timeout: float = 3600) -> str:
    """``pki-edge --data DATA ARGS``; raises with its output when it fails."""
    cmd = [pki_edge_bin(), "--data", str(data), *map(str, args)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=clean_env())
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}: {proc.stderr.strip()}")
    return proc.stdout


def clean_env(**extra: str) -> dict[str, str]:
    """Child environment without PKI_EDGE_* overrides from the caller or proxies."""
    import os

    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("PKI_EDGE_") and k.lower() not in ("http_proxy", "https_proxy", "all_proxy")
    }
    env["NO_PROXY"] = env["no_proxy"] = "*"
    env.update(extra)
    return env


@dataclass(frozen=True)
class Serial:
    value: int
    revoked: bool


def _utc_time(when: dt.datetime) -> str:
    return when.strftime("%y%m%d%H%M%SZ")


def serials(n: int, seed: int) -> Iterator[Serial]:
    """N distinct-in-practice random serials (127 bits: a collision has probability ~N²/2^128)."""
    rng = random.Random(seed)
    for i in range(n):
        # Top bit set: always 16 octets, so "%032X" is exactly what openssl's index lookup expects.
        value = rng.getrandbits(SERIAL_BITS) | (1 << (SERIAL_BITS - 1))
        yield Serial(value, i % REVOKED_EVERY == REVOKED_EVERY - 1)


def index_line(i: int, serial: Serial, expiry: str, revocation: str) -> str:
    flag, rev = ("R", revocation) if serial.revoked else ("V", "")
    return f"{flag}\t{expiry}\t{rev}\t{serial.value:032X}\tunknown\t/CN=device-{i}\n"


def write_openssl_index(path: Path, n: int, seed: int, sample_size: int, now: dt.datetime) -> list[Serial]:
    """Write index.txt with N serials; returns a uniform random sample of ``sample_size`` of them."""
    rng = random.Random(seed + 1)
    wanted = set(rng.sample(range(n), min(sample_size, n)))
    expiry = _utc_time(now + dt.timedelta(days=365))
    revocation = _utc_time(now - dt.timedelta(days=1)) + ",keyCompromise"
    sample = []
    with path.open("w", encoding="ascii", buffering=1 << 20) as out:
        for i, serial in enumerate(serials(n, seed)):
            out.write(index_line(i, serial, expiry, revocation))
            if i in wanted:
                sample.append(serial)
    return sample


def read_index_serials(path: Path, limit: int) -> list[Serial]:
    out = []
    with path.open(encoding="ascii") as lines:
        for line in lines:
            fields = line.split("\t")
            out.append(Serial(int(fields[3], 16), fields[0] == "R"))
            if len(out) >= limit:
                break
    return out


def _open_readonly(data: Path) -> Any:
    from contract import store
    from contract.config import load_config

    return store.open_env(data, readonly=True, map_size=load_config(data).store.map_size_mb << 20)


def ca_record(data: Path, name: str = CA_NAME) -> Any:
    """The CA's IssuerRecord, read from the store read-only (as the edge does)."""
    from contract import store

    env = _open_readonly(data)
    try:
        with env.begin(db=env.open_db(store.DB_ISSUERS, create=False)) as txn:
            raw = txn.get(name.encode())
        if raw is None:
            raise RuntimeError(f"no CA {name!r} in {data}")
        return store.ISSUER_DECODER.decode(raw)
    finally:
        env.close()


def stored_responses(data: Path, wanted: Iterable[tuple[int, str]], name: str = CA_NAME) -> dict[tuple[int, str], Any]:
    """The StoredResponse of each (serial, hash algorithm) that has one."""
    from contract import store

    issuer = ca_record(data, name)
    env = _open_readonly(data)
    out = {}
    try:
        with env.begin(db=env.open_db(store.DB_RESPONSES, create=False)) as txn:
            for serial, hash_name in wanted:
                code = store.HASH_ALGORITHMS[hash_name][0]
                raw = txn.get(store.response_key(issuer.number, code, store.serial_key(serial)))
                if raw is not None:
                    out[(serial, hash_name)] = store.RESPONSE_DECODER.decode(raw)
    finally:
        env.close()
    return out


def store_counts(data: Path) -> dict[str, int]:
    """Entries of the inventory, responses and pending databases."""
    from contract import store

    env = _open_readonly(data)
    try:
        with env.begin() as txn:
            return {
                name.decode(): int(txn.stat(env.open_db(name, txn=txn, create=False))["entries"])
                for name in (store.DB_INVENTORY, store.DB_RESPONSES, store.DB_PENDING)
            }
    finally:
        env.close()


@dataclass
class BuildReport:
    serials: int
    key: str
    index_seconds: float = 0.0
    import_seconds: float = 0.0
    sign: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def build(
    data: Path,
    n: int,
    *,
    key: str = "ec-p256",
    seed: int = 1,
    sample_size: int = 10000,
    cpu: int | None = 0,
    time_limit: float = 6 * 3600,
    log: Any = None,
) -> tuple[BuildReport, list[Serial]]:
    """Create the CA, write and import index.txt, sign everything; returns the report and a serial sample."""
    say = log or (lambda msg: None)
    report = BuildReport(serials=n, key=key)
    data.mkdir(parents=True, exist_ok=True)
    run_cli(data, "ca", "create", CA_NAME, "--key", key)
    started = time.monotonic()
    sample = write_openssl_index(data / "index.txt", n, seed, sample_size, dt.datetime.now(dt.UTC))
    report.index_seconds = time.monotonic() - started
    say(f"  index.txt with {n} serials written in {report.index_seconds:.1f} s")
    started = time.monotonic()
    run_cli(data, "import", CA_NAME, "--openssl-index", data / "index.txt", timeout=time_limit)
    report.import_seconds = time.monotonic() - started
    say(f"  imported in {report.import_seconds:.1f} s")
    report.sign = run_sign_process(data, "sign", cpu=cpu, time_limit=time_limit)
    sign = report.sign
    say(
        f"  signed {sign['responses']} responses in {sign['wall_seconds']:.1f} s wall "
        f"({sign['responses_per_cpu_second']:.0f}/CPU-s; raw sign {sign['raw_signs_per_cpu_second']:.0f}/CPU-s; "
        f"ratio {sign['ratio_vs_raw_sign']:.2f})"
    )
    return report, sample


def sign_command(data: Path, what: str, cpu: int | None, time_limit: float) -> list[str]:
    cmd = [sys.executable, "-m", "bench.dataset", what, "--data", str(data), "--time-limit", str(time_limit)]
    return (["taskset", "-c", str(cpu)] if cpu is not None else []) + cmd


def run_sign_process(data: Path, what: str, *, cpu: int | None, time_limit: float) -> Any:
    """Run ``python -m bench.dataset sign|refresh`` (pinned to ``cpu``) and return its JSON report."""
    cmd = sign_command(data, what, cpu, time_limit)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=time_limit + 120, env=clean_env())
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}: {proc.stderr.strip()[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------------- in the pinned process


class _ShiftedClock:
    """The signer's clock moved forward, so that every response is due for refresh."""

    def __init__(self, shift: int) -> None:
        self._shift = shift

    def now(self) -> int:
        return int(time.time()) + self._shift

    def monotonic(self) -> float:
        return time.monotonic()


RAW_MESSAGE = b"\x30\x81\xa0" + bytes(range(160))  # about the size of a ResponseData
# Share of the signer's CPU time given to the raw reference, taken between its batches: both rates
# then see the same machine (this one's speed moves by tens of per cent within seconds).
RAW_SHARE = 0.05


class RawReference:
    """Times raw ``private_key.sign()`` of the signer's own key, a little after each batch."""

    def __init__(self, key: Any) -> None:
        from signer.keys import signature_hash, signer_for

        self._sign = signer_for(key, signature_hash(key))  # key.sign(data, algorithm) made once
        self.signs = 0
        self.cpu_seconds = 0.0
        self.wall_seconds = 0.0

    def sample(self, cpu_seconds: float) -> None:
        """Sign for about ``cpu_seconds`` of CPU (at least once)."""
        cpu0, wall0 = time.process_time(), time.monotonic()
        while True:
            self._sign(RAW_MESSAGE)
            self.signs += 1
            if time.process_time() - cpu0 >= cpu_seconds:
                break
        self.cpu_seconds += time.process_time() - cpu0
        self.wall_seconds += time.monotonic() - wall0

    @property
    def per_cpu_second(self) -> float:
        return self.signs / self.cpu_seconds if self.cpu_seconds else 0.0


def _sign_in_process(data: Path, what: str, time_limit: float) -> dict[str, Any]:
    """Run the Precomputer until nothing is pending or due; time it against raw signing."""
    from contract.config import load_config
    from signer.precompute import Clock, Precomputer
    from signer.registry import load_ca_key, load_response_signer
    from signer.state import SignerStore

    config = load_config(data)
    st = SignerStore(data, config)
    issuer = st.issuer(CA_NAME)
    key = load_ca_key(data, issuer)
    with st.env.begin() as txn:
        inventory = int(txn.stat(st.inventory)["entries"])
    RawReference(key).sample(0.05)  # warm up; the counting reference starts from zero
    raw = RawReference(key)
    clock: Any = Clock()
    if what == "refresh":
        signer_config = config.signer
        clock = _ShiftedClock(int(signer_config.validity_hours * 3600 * signer_config.refresh_fraction) + 60)
    pre = Precomputer(
        st,
        config.signer,
        lambda record: load_response_signer(data, record),
        clock,
        logging.getLogger("bench"),
        random.Random(0),
    )
    pre.reload_issuers()
    handled = batches = 0
    cpu = 0.0
    wall0 = time.monotonic()
    deadline = wall0 + time_limit
    max_batches = inventory + 10  # each batch handles at least one serial
    while batches < max_batches and time.monotonic() < deadline:
        cpu0 = time.process_time()
        n = pre.run_batch()
        batch_cpu = time.process_time() - cpu0
        cpu += batch_cpu
        if n == 0:
            break
        handled += n
        batches += 1
        raw.sample(RAW_SHARE * batch_cpu)
    wall = time.monotonic() - wall0 - raw.wall_seconds
    with st.env.begin() as txn:
        pending = int(txn.stat(st.pending)["entries"])
        responses = int(txn.stat(st.responses)["entries"])
    st.close()
    algorithms = len(config.signer.hash_algorithms)
    signed = handled * algorithms
    rate_cpu = signed / cpu if cpu else 0.0
    return {
        "what": what,
        "key": type(key).__name__,
        "serials": handled,
        "hash_algorithms": algorithms,
        "responses": signed,
        "responses_in_store": responses,
        "pending_left": pending,
        "batches": batches,
        "wall_seconds": wall,
        "cpu_seconds": cpu,
        "responses_per_cpu_second": rate_cpu,
        "responses_per_wall_second": signed / wall if wall else 0.0,
        "raw_signs": raw.signs,
        "raw_cpu_seconds": raw.cpu_seconds,
        "raw_signs_per_cpu_second": raw.per_cpu_second,
        "raw_how": f"key.sign() of a {len(RAW_MESSAGE)}-byte message after each batch, {RAW_SHARE:.0%} of its CPU",
        "ratio_vs_raw_sign": rate_cpu / raw.per_cpu_second if raw.per_cpu_second else 0.0,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.dataset", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("build", help="build a dataset (CA, index.txt, import, sign)")
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--serials", type=int, required=True)
    p.add_argument("--key", default="ec-p256")
    p.add_argument("--seed", type=int, default=1)
    for name in ("sign", "refresh"):
        p = sub.add_parser(name, help=f"{name} every serial in-process and print a JSON report")
        p.add_argument("--data", type=Path, required=True)
        p.add_argument("--time-limit", type=float, default=6 * 3600)
    args = parser.parse_args(argv)
    if args.command == "build":
        report, _ = build(args.data, args.serials, key=args.key, seed=args.seed, log=print)
        print(json.dumps(report.as_dict()))
    else:
        print(json.dumps(_sign_in_process(args.data, args.command, args.time_limit)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
