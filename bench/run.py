"""The pki-edge benchmark: pki-edge against nginx, cfssl and openssl on the same data, one table.

    make bench        # quick mode, a few minutes:  python -m bench.run --mode quick --install-tools
    make bench-full   # full mode (1M-serial scale, longer rounds):  python -m bench.run --mode full --install-tools

Servers run on one core (``taskset -c 0``), wrk and this runner on the other (``taskset -c 1``), over
loopback with keep-alive. Every server gets the same request mixes (bench/reqset.py); rounds are
interleaved (A, B, C, … A, B, C, …) and every figure is a median over rounds; ratios are medians of
per-round ratios against the reference measured in the same round (nginx for GET, cfssl for POST).
Requests per server CPU-second divide wrk's request count by the CPU time the server's process tree
really got (utime + stime from /proc), which is what stays comparable on a shared, noisy machine.
Results: bench/results/latest.json, throughput.png, latency.png, and the marked section of
bench/README.md. See bench/README.md for the method.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import functools
import os
import shutil
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from bench import dataset, floor, plots, probe, procstat, references, report, reqset, revocation, tools, wrk
from bench import est as est_stage
from bench.process import Proc, free_port
from bench.references import SPECS

HERE = Path(__file__).resolve().parent
MIXES = ("get-uniform", "get-zipf", "post-uniform", "post-zipf")
HASH_ALGORITHMS = ("sha1", "sha256")
PACED_DELAY_MS = 10
QUIET_SHARE = 10  # the latency stage also runs at this fraction of its rate: the machine's own p99


@dataclass(frozen=True)
class Mode:
    name: str
    serials: int  # the comparison dataset
    rounds: int
    seconds: float
    openssl_seconds: float
    warmup_seconds: float
    latency_rounds: int
    latency_seconds: float
    revocations: int
    scale_serials: tuple[int, ...]
    scale_sample: int
    scale_rounds: int
    rsa_serials: int
    mix_length: int
    connections: int = 32
    edge_start_samples: int = 3


MODES = {
    "quick": Mode(
        name="quick",
        serials=10_000,
        rounds=3,
        seconds=5,
        openssl_seconds=2,
        warmup_seconds=1,
        latency_rounds=3,
        latency_seconds=5,
        revocations=20,
        scale_serials=(),
        scale_sample=20_000,
        scale_rounds=3,
        rsa_serials=2_000,
        mix_length=50_000,
    ),
    "full": Mode(
        name="full",
        serials=10_000,
        rounds=5,
        seconds=10,
        openssl_seconds=3,
        warmup_seconds=2,
        latency_rounds=5,
        latency_seconds=10,
        revocations=100,
        scale_serials=(1_000_000,),
        scale_sample=50_000,
        scale_rounds=5,
        rsa_serials=20_000,
        mix_length=100_000,
        edge_start_samples=5,
    ),
}
LONG_SERIALS = 10_000_000
BYTES_PER_SERIAL = 2500  # disk estimate per serial (inventory, 2 responses with headers, schedule, index.txt)


def say(message: str) -> None:
    print(message, flush=True)


def rotated(items: Sequence[str], by: int) -> list[str]:
    if not items:
        return []
    k = by % len(items)
    return [*items[k:], *items[:k]]


def pem(cert_der: bytes) -> bytes:
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    return x509.load_der_x509_certificate(cert_der).public_bytes(Encoding.PEM)


@dataclass
class RequestSet:
    """The items (one request per serial and hash algorithm) and the mix files built from them."""

    items: list[reqset.Item]
    mixes: dict[str, Path]
    chosen: dict[str, list[int]]  # mix -> item index of each line
    excluded: int


def make_request_set(
    ca_der: bytes, sample: Sequence[dataset.Serial], out: Path, length: int, seed: int, mixes: Sequence[str]
) -> RequestSet:
    out.mkdir(parents=True, exist_ok=True)
    all_items = reqset.build_items(ca_der, [(s.value, s.revoked) for s in sample], HASH_ALGORITHMS)
    items = [item for item in all_items if reqset.servable_as_static_file(item)]
    paths, chosen = {}, {}
    for n, mix in enumerate(mixes):
        method, distribution = mix.split("-")
        lines, indices = reqset.request_lines(items, method.upper(), distribution, length, seed + n)
        paths[mix] = reqset.write_lines(out / f"{mix}.txt", lines)
        chosen[mix] = indices
    return RequestSet(items, paths, chosen, len(all_items) - len(items))


class Bench:
    def __init__(self, mode: Mode, args: argparse.Namespace, work: Path, out: Path) -> None:
        self.mode = mode
        self.args = args
        self.work = work
        self.out = out
        self.server_cpu, self.load_cpu = (0, 1) if (os.cpu_count() or 1) >= 2 else (0, 0)
        self.servers: list[str] = [s for s in args.servers if s in SPECS]
        # The other pki-edges right after pki-edge: in every round they run in the same minutes.
        for other, wanted in (("pki-edge-base", args.baseline), ("pki-edge-alt", args.alt_python)):
            if wanted is not None:
                self.servers.insert(self.servers.index("pki-edge") + 1 if "pki-edge" in self.servers else 0, other)
        self.baseline = work / "baseline"  # the checkout of --baseline
        self.procs: dict[str, Proc] = {}
        self.ports: dict[str, int] = {}
        self.started = time.monotonic()
        self.results: dict[str, Any] = {
            "mode": mode.name,
            "started": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "command": "",
            "machine": tools.machine(),
            "versions": tools.versions(),
            "config": {},
            "notes": [],
            "runs": [],
            "signer": {"builds": [], "rates": [], "refresh": []},
        }
        if args.alt_python is not None:
            self.results["versions"]["python of pki-edge-alt"] = tools.python_of(args.alt_python)
        if tools.UNOPTIMIZED in self.results["versions"]["python"]:
            note = (
                f"Python {self.results['versions']['python']}: pki-edge's figures here are lower than on a "
                "distribution's or the Docker image's build (bench/README.md, \"The interpreter\")"
            )
            say(note)
            self.results["notes"].append(note)
        self.main_data = work / "main"
        self.requests: RequestSet | None = None
        self.responses: dict[tuple[int, str], Any] = {}
        self.exports: dict[str, Path] = {}
        # --cdn-headers: every request carries the headers a CDN adds (wrk alone sends Host).
        self.headers_file = (
            reqset.write_headers(work / "cdn-headers.txt", reqset.CDN_HEADERS) if args.cdn_headers else None
        )

    # ------------------------------------------------------------------------------------------ dataset

    def build_main(self) -> None:
        mode = self.mode
        say(f"dataset: {mode.serials:,} serials, EC P-256 CA, signing pinned to CPU {self.server_cpu}")
        build, sample = dataset.build(
            self.main_data, mode.serials, sample_size=mode.serials, cpu=self.server_cpu, log=say
        )
        self.record_build(build)
        ca = dataset.ca_record(self.main_data)
        self.requests = make_request_set(ca.cert_der, sample, self.work / "mixes", mode.mix_length, 7, MIXES)
        items = self.requests.items
        self.responses = dataset.stored_responses(self.main_data, [(i.serial, i.hash_name) for i in items])
        missing = [i for i in items if (i.serial, i.hash_name) not in self.responses]
        if missing:
            raise RuntimeError(f"{len(missing)} requests of the mix have no stored response")
        say(
            f"  {len(items):,} requests ({self.requests.excluded} left out: their base64 ends in '/', "
            "a directory for nginx), mixes of "
            f"{mode.mix_length:,} lines"
        )
        # The same data for the references.
        static = self.work / "static"
        n = references.export_static_files(
            static, ((reqset.static_file_name(i.der), self.responses[(i.serial, i.hash_name)].der) for i in items)
        )
        cfssl_file = self.work / "cfssl-responses.txt"
        references.export_cfssl_responses(cfssl_file, (self.responses[(i.serial, i.hash_name)].der for i in items))
        floor_file = self.work / "floor-answers.msgpack"
        floor.write_answers(floor_file, self.floor_pairs(self.requests))
        ca_pem = self.work / "ca.pem"
        ca_pem.write_bytes(pem(ca.cert_der))
        self.exports = {
            "static": static,
            "cfssl": cfssl_file,
            "floor": floor_file,
            "ca_pem": ca_pem,
            "ca_key": self.main_data / "signer" / "keys" / f"{dataset.CA_NAME}.ca.key",
            "index": self.main_data / "index.txt",
        }
        say(f"  exported {n:,} static files for nginx, {n:,} responses for cfssl, index.txt + CA for openssl")

    def floor_pairs(self, rs: RequestSet) -> Iterator[tuple[bytes, bytes]]:
        """Each request of the mixes as the floor server sees it (GET path or POST body), with its answer."""
        for mix, path in rs.mixes.items():
            with path.open() as lines:
                for n, line in enumerate(lines):
                    method, target, body = reqset.parse_line(line)
                    item = rs.items[rs.chosen[mix][n]]
                    der = self.responses[(item.serial, item.hash_name)].der
                    yield (body if method == "POST" else target.encode()), der

    def record_build(self, build: dataset.BuildReport) -> None:
        entry = build.as_dict()
        self.results["signer"]["builds"].append(entry)
        sign = entry["sign"]
        self.results["signer"]["rates"].append(
            {
                "key": build.key,
                "serials": build.serials,
                "responses_per_cpu_second": sign["responses_per_cpu_second"],
                "raw_per_cpu_second": sign["raw_signs_per_cpu_second"],
                "ratio": sign["ratio_vs_raw_sign"],
            }
        )

    # ------------------------------------------------------------------------------------------ servers

    def start(self, server: str, *, data: Path | None = None, name: str | None = None) -> Proc:
        port = free_port()
        cpu = self.server_cpu
        work = self.work / "logs"
        work.mkdir(exist_ok=True)
        if server == "pki-edge":
            proc = references.start_pki_edge(work, data or self.main_data, port, cpu, name=name or server)
        elif server == "pki-edge-asgi":
            proc = references.start_pki_edge(work, data or self.main_data, port, cpu, fast_lane=False)
        elif server == "pki-edge-alt":
            executable = references.alt_pki_edge(self.args.alt_python)
            proc = references.start_pki_edge(work, self.main_data, port, cpu, name=server, executable=executable)
        elif server == "pki-edge-base":
            proc = references.start_pki_edge(work, self.main_data, port, cpu, name=server, source=self.baseline)
        elif server == "nginx":
            proc = references.start_nginx(self.work, self.exports["static"], port, cpu)
        elif server == "python-floor":
            proc = references.start_floor(work, self.exports["floor"], port, cpu)
        elif server == "openssl":
            e = self.exports
            proc = references.start_openssl(work, e["index"], e["ca_pem"], e["ca_key"], port, cpu)
        elif server == "cfssl":
            proc = references.start_cfssl(work, self.exports["cfssl"], port, cpu)
        else:
            raise ValueError(server)
        self.ports[name or server] = port
        method = "POST" if server == "cfssl" else "GET"
        line = self.first_line(method)
        m, path, body = reqset.parse_line(line)
        proc.wait_until(
            lambda: (r := probe.answers(port, m, path, body, timeout=1.0)) is not None and r.status == 200, 60
        )
        return proc

    def first_line(self, method: str, mix_set: RequestSet | None = None) -> str:
        rs = mix_set or self.requests
        assert rs is not None
        with rs.mixes[f"{method.lower()}-uniform"].open() as lines:
            return lines.readline()

    def start_servers(self) -> None:
        for server in self.servers:
            if not SPECS[server].fresh_per_run:
                self.procs[server] = self.start(server)
                say(f"  {server} ready on 127.0.0.1:{self.ports[server]} (pid {self.procs[server].pid})")

    def stop_servers(self) -> None:
        for proc in self.procs.values():
            proc.stop()
        self.procs.clear()

    def verify(self) -> None:
        """Check answers before timing anything: a server that answers wrongly is left out of that method."""
        rs = self.requests
        assert rs is not None
        verification: dict[str, dict[str, Any]] = {}
        for server in self.servers:
            spec = SPECS[server]
            proc = self.procs.get(server) or self.start(server)
            port = self.ports[server]
            verification[server] = {}
            try:
                for method in ("GET", "POST"):
                    checked, problems = self.check_answers(server, port, method, rs)
                    ok = not problems
                    verification[server][method] = {"checked": checked, "ok": ok, "problems": problems[:5]}
                    if method in spec.methods and not ok:
                        say(f"  {server} {method}: WRONG ANSWERS, left out: {problems[:3]}")
                        self.results["notes"].append(f"{server} {method} left out: {problems[0]}")
                    elif method in spec.methods:
                        say(f"  {server} {method}: {checked} answers checked")
            finally:
                if spec.fresh_per_run:
                    proc.stop()
        self.results["verification"] = verification

    def check_answers(
        self, server: str, port: int, method: str, rs: RequestSet, count: int = 40
    ) -> tuple[int, list[str]]:
        mix = f"{method.lower()}-uniform"
        problems: list[str] = []
        client = probe.Client(port, timeout=5)
        with rs.mixes[mix].open() as lines:
            for n, line in enumerate(lines):
                if n >= count:
                    break
                m, path, body = reqset.parse_line(line)
                item = rs.items[rs.chosen[mix][n]]
                try:
                    reply = client.request(m, path, body)
                except OSError as exc:
                    problems.append(f"{m} {path[:40]}…: {exc}")
                    continue
                expected = self.responses[(item.serial, item.hash_name)].der
                if reply.status != 200:
                    problems.append(f"{m}: HTTP {reply.status}")
                elif server in ("pki-edge", "pki-edge-alt", "pki-edge-base", "pki-edge-asgi", "python-floor", "nginx"):
                    if reply.body != expected:
                        problems.append(f"{m}: body is not the stored response")
                elif server == "cfssl":
                    other = self.responses.get((item.serial, "sha1" if item.hash_name == "sha256" else "sha256"))
                    if reply.body not in (expected, other.der if other else None):
                        problems.append(f"{m}: body is not a stored response of that serial")
                else:
                    status, serial = probe.cert_status(reply.body)
                    want = "revoked" if item.revoked else "good"
                    if status != want or serial != item.serial:
                        problems.append(f"{m}: {status} for serial {serial}, expected {want}")
        client.close()
        return min(count, len(rs.chosen[mix])), problems

    def serves(self, server: str, mix: str) -> bool:
        method = report.mix_method(mix)
        check = self.results.get("verification", {}).get(server, {}).get(method, {})
        return method in SPECS[server].methods and bool(check.get("ok"))

    # -------------------------------------------------------------------------------------- measurement

    def measure(
        self,
        server: str,
        mix_file: Path,
        seconds: float,
        *,
        proc: Proc | None = None,
        port: int | None = None,
        connections: int | None = None,
        delay_ms: int | None = None,
    ) -> dict[str, Any]:
        spec = SPECS.get(server)
        fresh = spec is not None and spec.fresh_per_run and proc is None
        if fresh:
            proc = self.start(server)
        proc = proc or self.procs[server]
        port = port or self.ports[server]
        connections = connections or (spec.connections if spec and spec.connections else self.mode.connections)
        cmd = wrk.command(
            f"http://127.0.0.1:{port}/",
            mix_file,
            connections=connections,
            duration_s=seconds,
            cpu=self.load_cpu,
            delay_ms=delay_ms,
            headers_file=self.headers_file,
        )
        try:
            steal0 = procstat.steal_seconds(self.server_cpu)
            user0, system0 = proc.cpu_split()
            result, output = wrk.run(cmd, seconds)
            user1, system1 = proc.cpu_split()
            steal1 = procstat.steal_seconds(self.server_cpu)
        finally:
            if fresh:
                proc.stop()
        user, system = user1 - user0, system1 - system0
        cpu = user + system
        duration = result.duration_s or seconds
        # The hypervisor's steal on the server core: a noisy round shows here, not only as lower req/s.
        steal = (steal1 - steal0) / duration if steal0 is not None and steal1 is not None else None
        return {
            "server": server,
            "seconds": seconds,
            "connections": connections,
            "requests": result.requests,
            "duration_s": duration,
            "rps": result.rps,
            "server_cpu_s": cpu,
            "server_user_s": user,
            "server_system_s": system,
            "req_per_cpu_s": result.requests / cpu if cpu > 0 else None,
            "server_cpu_util": cpu / duration,
            "server_core_steal": steal,
            "client_cpu_s": result.client_cpu_s,
            "client_cpu_util": result.client_cpu_s / duration,
            "latency_us": result.latency_us,
            "errors": result.errors,
            "error_count": result.error_count,
            "bytes_per_response": result.bytes / result.requests if result.requests else 0.0,
            "wrk_tail": output.strip().splitlines()[-8:] if result.requests == 0 else [],
        }

    def seconds_for(self, server: str) -> float:
        return self.mode.openssl_seconds if SPECS[server].short_runs else self.mode.seconds

    def throughput(self) -> None:
        rs = self.requests
        assert rs is not None
        mode = self.mode
        say(f"warm-up ({mode.warmup_seconds:g} s per server and mix)")
        for mix in MIXES:
            for server in self.servers:
                if self.serves(server, mix) and not SPECS[server].fresh_per_run:
                    self.measure(server, rs.mixes[mix], mode.warmup_seconds)
        say(f"throughput: {mode.rounds} rounds × {mode.seconds:g} s, servers interleaved")
        for rnd in range(mode.rounds):
            for mix in MIXES:
                order = rotated([s for s in self.servers if self.serves(s, mix)], rnd)
                for server in order:
                    run = self.measure(server, rs.mixes[mix], self.seconds_for(server))
                    run.update({"mix": mix, "round": rnd})
                    self.results["runs"].append(run)
                    say(describe(run))

    def latency(self) -> None:
        rs = self.requests
        assert rs is not None
        rows = report.summarize(self.results["runs"])
        plan = []
        # The floor too: whether a Python server can meet the p99 goal at this rate at all.
        for mix, others in (("get-uniform", ("nginx", "python-floor")), ("post-uniform", ("cfssl", "python-floor"))):
            row = next((r for r in rows if r["server"] == "pki-edge" and r["mix"] == mix), None)
            if row is None or not row["rps"]:
                continue
            target = row["rps"] / 2
            # The other pki-edges (--baseline, --alt-python) at pki-edge's rate: their p99 and CPU beside it.
            mine = ("pki-edge", "pki-edge-base", "pki-edge-alt")
            servers = [s for s in (*mine, *others) if s in self.servers and self.serves(s, mix)]
            connections, delay = paced_connections(target)
            # Calibrate once on pki-edge: wrk's think time comes after each answer, so the offered rate
            # also depends on latency; scale the connection count by offered/achieved (at most 2×).
            trial = self.measure("pki-edge", rs.mixes[mix], 2, connections=connections, delay_ms=delay)
            if trial["rps"] > 0:
                connections = min(2 * connections, max(connections, round(connections * target / trial["rps"])))
            plan.append((mix, mix, target, servers, connections, delay))
        if plan and plan[0][0] == "get-uniform":
            # The same servers at a tenth of that rate, nowhere near busy: what p99 this machine gives
            # whatever the server (wake-ups of idle virtual CPUs, steal), beside what load adds.
            _, mix, target, servers, _, _ = plan[0]
            quiet = target / QUIET_SHARE
            plan.append((f"{mix}/{QUIET_SHARE}", mix, quiet, servers, *paced_connections(quiet)))
        if not plan:
            return
        say(
            f"latency at half of pki-edge's saturation (and GET at 1/{QUIET_SHARE} of it): "
            f"{self.mode.latency_rounds} rounds × {self.mode.latency_seconds:g} s"
        )
        runs = []
        for rnd in range(self.mode.latency_rounds):
            for label, mix, target, servers, connections, delay in plan:
                for server in rotated(servers, rnd):
                    run = self.measure(
                        server, rs.mixes[mix], self.mode.latency_seconds, connections=connections, delay_ms=delay
                    )
                    run.update({"mix": label, "round": rnd, "target_rps": target, "delay_ms": delay})
                    runs.append(run)
                    say(describe(run, paced=True))
        self.results["latency"] = {"runs": runs, "summary": report.summarize_latency(runs), "delay_ms": PACED_DELAY_MS}

    def revocations(self) -> None:
        rs = self.requests
        assert rs is not None
        if "pki-edge" not in self.procs:
            return
        targets = []
        seen = set()
        for item in rs.items:
            if not item.revoked and item.hash_name == "sha256" and item.serial not in seen:
                seen.add(item.serial)
                targets.append((item.serial, item.der))
            if len(targets) >= self.mode.revocations:
                break
        say(
            f"revocation propagation: {len(targets)} revocations under wrk load (GET mix), "
            f"signer on CPU {self.server_cpu}"
        )
        self.results["revocation"] = revocation.measure(
            self.main_data,
            self.work / "logs",
            self.ports["pki-edge"],
            targets,
            rs.mixes["get-uniform"],
            server_cpu=self.server_cpu,
            load_cpu=self.load_cpu,
            connections=self.mode.connections,
            say=say,
        )
        # Those serials are revoked now: later checks of the same requests must expect it.
        revoked = {serial for serial, _ in targets}
        rs.items[:] = [replace(i, revoked=True) if i.serial in revoked else i for i in rs.items]

    def stage(self, name: str, job: Callable[[], Any]) -> Any:
        """Run an optional stage; a failure is reported and recorded, and the run goes on to its results."""
        try:
            return job()
        except Exception as exc:
            note = f"stage {name} failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            say(note)
            traceback.print_exc()
            self.results["notes"].append(note)
            return None

    def memory(self, proc: Proc, serials: int) -> None:
        worst: dict[str, Any] | None = None
        for pid in proc.pids():
            mem = procstat.memory_kb(pid)
            if mem and (worst is None or mem.get("VmRSS", 0) > worst.get("VmRSS", 0)):
                worst = {"pid": pid, **mem}
        if worst:
            entry = {"serials": serials, "RssAnon": 0, "RssFile": 0, **worst}
            self.results.setdefault("edge_memory", []).append(entry)
            say(
                f"  edge memory ({serials:,} serials): VmRSS {entry['VmRSS'] / 1024:.0f} MB, RssAnon "
                f"{entry['RssAnon'] / 1024:.0f} MB, RssFile {entry['RssFile'] / 1024:.0f} MB"
            )

    def edge_start(self, data: Path, serials: int, rs: RequestSet) -> None:
        """Seconds from spawning `pki-edge edge` to its first correct OCSP answer."""
        method, path, body = reqset.parse_line(self.first_line("POST", rs))
        samples = []
        for n in range(self.mode.edge_start_samples):
            port = free_port()
            proc = references.start_pki_edge(self.work / "logs", data, port, self.server_cpu, name=f"edge-start-{n}")
            try:
                samples.append(
                    proc.wait_until(
                        functools.partial(answers_ocsp, port, method, path, body),
                        timeout=60,
                        interval=0.01,
                    )
                )
            finally:
                proc.stop()
        entry = {"serials": serials, "samples_s": samples, "median_s": report.median(samples), "max_s": max(samples)}
        self.results.setdefault("edge_start", []).append(entry)
        say(f"  edge start to first answer ({serials:,} serials): " + ", ".join(f"{s:.2f}" for s in samples) + " s")

    # ------------------------------------------------------------------------------------------------ scale

    def scale(self, serials: int) -> Path | None:
        free = shutil.disk_usage(self.work).free
        needed = serials * BYTES_PER_SERIAL
        if free < 1.5 * needed:
            note = f"scale {serials:,} skipped: {free / 1e9:.0f} GB free, about {needed / 1e9:.0f} GB needed"
            say(note)
            self.results["notes"].append(note)
            return None
        data = self.work / f"scale-{serials}"
        say(f"scale: dataset of {serials:,} serials (about {needed / 1e9:.1f} GB)")
        build, sample = dataset.build(
            data, serials, sample_size=self.mode.scale_sample, cpu=self.server_cpu, seed=serials, log=say
        )
        self.record_build(build)
        ca = dataset.ca_record(data)
        mixes = ("get-uniform", "post-uniform")
        rs = make_request_set(ca.cert_der, sample, data / "mixes", self.mode.mix_length, 11, mixes)
        base_rs = self.requests
        assert base_rs is not None
        label_big, label_base = f"pki-edge@{serials:,}", f"pki-edge@{self.mode.serials:,}"
        big = self.start("pki-edge", data=data, name=label_big)
        base = self.start("pki-edge", name=label_base)
        procs = {label_big: (big, rs), label_base: (base, base_rs)}
        runs = []
        try:
            for label, (_, mixset) in procs.items():
                for mix in mixes:
                    problems = check_ocsp_answers(self.ports[label], mixset, mix)
                    if problems:
                        raise RuntimeError(f"{label} answers {mix} wrongly: {problems[:3]}")
            for label, (proc, mixset) in procs.items():
                for mix in mixes:
                    self.measure(label, mixset.mixes[mix], self.mode.warmup_seconds, proc=proc, port=self.ports[label])
            for rnd in range(self.mode.scale_rounds):
                for mix in mixes:
                    for label in rotated(list(procs), rnd):
                        proc, mixset = procs[label]
                        run = self.measure(
                            label, mixset.mixes[mix], self.mode.seconds, proc=proc, port=self.ports[label]
                        )
                        run.update({"mix": mix, "round": rnd})
                        runs.append(run)
                        say(describe(run))
            self.memory(big, serials)
        finally:
            big.stop()
            base.stop()
        ratios = []
        for mix in mixes:
            per_round = []
            big_costs, base_costs = [], []
            for rnd in range(self.mode.scale_rounds):
                b = next(r for r in runs if r["server"] == label_big and r["mix"] == mix and r["round"] == rnd)
                a = next(r for r in runs if r["server"] == label_base and r["mix"] == mix and r["round"] == rnd)
                if b["requests"] and a["requests"] and a["server_cpu_s"] > 0:
                    cost_b, cost_a = b["server_cpu_s"] / b["requests"], a["server_cpu_s"] / a["requests"]
                    big_costs.append(cost_b)
                    base_costs.append(cost_a)
                    per_round.append(cost_b / cost_a)
            if per_round:
                ratios.append(
                    {
                        "mix": mix,
                        "serials": serials,
                        "baseline": self.mode.serials,
                        "ratio": report.median(per_round),
                        "per_round": per_round,
                        "cost_us": 1e6 * (report.median(big_costs) or 0),
                        "baseline_cost_us": 1e6 * (report.median(base_costs) or 0),
                        "rounds": len(per_round),
                    }
                )
                say(
                    f"  {mix}: per-request CPU {serials:,} vs {self.mode.serials:,} serials: {ratios[-1]['ratio']:.2f}×"
                )
        scale = self.results.setdefault("scale", {"runs": [], "cost_ratios": []})
        scale["runs"] += runs
        scale["cost_ratios"] += ratios
        self.edge_start(data, serials, rs)
        return data

    # ---------------------------------------------------------------------------------------------- signer

    def signer(self, refresh_data: Path, refresh_serials: int) -> None:
        mode = self.mode
        say(f"signer: RSA-2048 dataset of {mode.rsa_serials:,} serials")
        build, _ = dataset.build(
            self.work / "rsa", mode.rsa_serials, key="rsa-2048", sample_size=0, cpu=self.server_cpu, log=say
        )
        self.record_build(build)
        say(f"signer: full refresh of {refresh_serials:,} serials × 2 on one core")
        one = dataset.run_sign_process(refresh_data, "refresh", cpu=self.server_cpu, time_limit=6 * 3600)
        self.results["signer"]["refresh"].append(
            {
                "cores": 1,
                "serials": one["serials"],
                "how": "one signer, one data directory",
                "wall_seconds": one["wall_seconds"],
                "cpu_seconds": one["cpu_seconds"],
                "responses_per_wall_second": one["responses_per_wall_second"],
                "detail": one,
            }
        )
        say(f"  {one['wall_seconds']:.1f} s wall ({one['responses_per_wall_second']:.0f} responses/s)")
        if self.load_cpu == self.server_cpu:
            return
        half = refresh_serials // 2
        say(f"signer: two data directories of {half:,} serials, one signer per core, built then refreshed together")
        dirs = [self.work / "refresh-a", self.work / "refresh-b"]
        cpus = [self.server_cpu, self.load_cpu]
        builds: list[Any] = [None, None]

        def build_one(i: int) -> None:
            builds[i] = dataset.build(dirs[i], half, sample_size=0, cpu=cpus[i], seed=100 + i)[0]

        run_parallel([functools.partial(build_one, i) for i in range(2)])
        reports: list[Any] = [None, None]

        def refresh_one(i: int) -> None:
            reports[i] = dataset.run_sign_process(dirs[i], "refresh", cpu=cpus[i], time_limit=6 * 3600)

        started = time.monotonic()
        run_parallel([functools.partial(refresh_one, i) for i in range(2)])
        wall = time.monotonic() - started
        # Each child's wall clock includes its start and the raw reference; take the signing phases only.
        wall_signing = max(r["wall_seconds"] for r in reports)
        responses = sum(r["responses"] for r in reports)
        self.results["signer"]["refresh"].append(
            {
                "cores": 2,
                "serials": sum(r["serials"] for r in reports),
                "how": "two data directories of half the serials, one signer pinned to each core, run together",
                "wall_seconds": wall_signing,
                "wall_seconds_with_startup": wall,
                "cpu_seconds": sum(r["cpu_seconds"] for r in reports),
                "responses_per_wall_second": responses / wall_signing,
                "detail": reports,
            }
        )
        say(f"  {wall_signing:.1f} s wall ({responses / wall_signing:.0f} responses/s)")

    # ------------------------------------------------------------------------------------------------- EST

    def est(self) -> None:
        """EST enrollments through the queue against raw certificate signing, OCSP during the storm (bench/est.py)."""
        settings = est_stage.settings(self.mode.name, self.mode.seconds, self.mode.connections)
        self.results["est"] = est_stage.run_stage(
            settings, self.work / "est", server_cpu=self.server_cpu, load_cpu=self.load_cpu, say=say
        )

    # ---------------------------------------------------------------------------------------------- output

    def finish(self, argv: Sequence[str]) -> None:
        results = self.results
        results["duration_s"] = time.monotonic() - self.started
        results["summary"] = report.summarize(results["runs"])
        results["goals"] = report.goals(results)
        results["command"] = reproduce_command(self.mode.name, argv, self.args.custom, Path(sys.prefix))
        # latest.json and the PNGs beside it are the committed results; every run (and any run with
        # custom settings, only) also goes to runs/ (not committed).
        runs_dir = self.out / "runs"
        runs_dir.mkdir(parents=True, exist_ok=True)
        stamp = results["started"].replace(":", "").replace("-", "")
        report.write_json(runs_dir / f"{stamp}-{self.mode.name}.json", results)
        title = f"pki-edge bench {results['started']} ({self.mode.name}), {results['machine']['cpu_model']}"
        png_dir, prefix = (runs_dir, f"{stamp}-") if self.args.custom else (self.out, "")
        plots.throughput(results["summary"], png_dir / f"{prefix}throughput.png", title)
        plots.latency(results.get("latency", {}).get("summary", []), png_dir / f"{prefix}latency.png", title)
        if not self.args.custom:
            report.write_json(self.out / "latest.json", results)
        if not self.args.custom and self.args.readme:
            report.update_readme(self.args.readme, report.section(results))
        say("")
        if extra := report.extra_headers(results["config"]):
            say(f"Every request {extra}.")
        say(report.table(results["summary"]))
        for line in report.against_other_pki_edges(results):
            say(line)
        if results.get("latency", {}).get("summary"):
            say("")
            say(report.latency_table(results["latency"]["summary"]))
        say("")
        say(report.goals_table(results["goals"]))
        written = f"{self.out / 'latest.json'} and " if not self.args.custom else ""
        say(f"\nresults: {written}{runs_dir / f'{stamp}-{self.mode.name}.json'} ({results['duration_s'] / 60:.1f} min)")


def check_ocsp_answers(port: int, rs: RequestSet, mix: str, count: int = 20) -> list[str]:
    """The first ``count`` requests of a mix get successful answers with the right serial and status."""
    problems = []
    client = probe.Client(port, timeout=5)
    try:
        with rs.mixes[mix].open() as lines:
            for n, line in zip(range(count), lines, strict=False):
                method, path, body = reqset.parse_line(line)
                item = rs.items[rs.chosen[mix][n]]
                reply = client.request(method, path, body)
                status, serial = probe.cert_status(reply.body)
                want = "revoked" if item.revoked else "good"
                if reply.status != 200 or status != want or serial != item.serial:
                    problems.append(f"{method}: HTTP {reply.status}, {status} for {serial}, expected {want}")
    finally:
        client.close()
    return problems


def answers_ocsp(port: int, method: str, path: str, body: bytes) -> bool:
    """True once the server gives a successful OCSP answer (good or revoked) to this request."""
    reply = probe.answers(port, method, path, body, timeout=1.0)
    return reply is not None and reply.status == 200 and probe.cert_status(reply.body)[0] in ("good", "revoked")


def reproduce_command(mode: str, argv: Sequence[str], custom: bool, venv: Path) -> str:
    """The command a reader runs to measure this again: the make target when there is one.

    A venv other than the checkout's ``.venv`` was made by ``make ... PYTHON=... VENV=...`` (the
    interpreter's build matters); options beyond the target's own are its ``BENCH_ARGS``.
    """
    direct = "python -m bench.run " + " ".join(argv)
    target = {"quick": "bench", "full": "bench-full"}.get(mode)
    if target is None or custom:
        return direct
    make = f"make {target}"
    repo = HERE.parent
    if venv.resolve() != (repo / ".venv").resolve():
        python = os.path.realpath(venv / "bin" / "python")
        make += f" PYTHON={python} VENV={os.path.relpath(venv, repo)}"
    extra = [arg for arg in argv if arg != "--install-tools"]
    if "--mode" in extra[:-1]:
        at = extra.index("--mode")
        del extra[at : at + 2]
    if extra:
        make += " BENCH_ARGS='" + " ".join(extra) + "'"
    return f"{make}   # = {direct}"


def paced_connections(target_rps: float, delay_ms: int = PACED_DELAY_MS, latency_ms: float = 0.5) -> tuple[int, int]:
    """Connections and mean think time so that wrk offers about ``target_rps``."""
    connections = max(1, round(target_rps * (delay_ms + latency_ms) / 1000))
    if connections > 1000:
        connections = 1000
        delay_ms = max(1, round(connections * 1000 / target_rps - latency_ms))
    return connections, delay_ms


def describe(run: dict[str, Any], paced: bool = False) -> str:
    lat = run["latency_us"]
    rpc = run["req_per_cpu_s"]
    text = (
        f"  r{run['round']} {run['mix']:<13} {run['server']:<20} {run['rps']:8.0f} req/s "
        f"{(rpc or 0):8.0f} req/CPU-s  server CPU {run['server_cpu_util']:4.0%}  "
        f"wrk CPU {run['client_cpu_util']:4.0%}  "
        + (f"steal {run['server_core_steal']:4.0%}  " if run.get("server_core_steal") is not None else "")
        + f"p50 {lat.get('p50', 0) / 1000:6.2f} ms  p99 {lat.get('p99', 0) / 1000:6.2f} ms  errors {run['error_count']}"
    )
    if paced:
        text += f"  (offered ≈{run['target_rps']:.0f}, c={run['connections']})"
    return text


def run_parallel(jobs: Sequence[Callable[[], None]]) -> None:
    errors: list[BaseException] = []

    def wrap(job: Callable[[], None]) -> None:
        try:
            job()
        except BaseException as exc:  # re-raised below, in the caller's thread
            errors.append(exc)

    threads = [threading.Thread(target=wrap, args=(job,)) for job in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mode", choices=sorted(MODES), default="quick")
    parser.add_argument(
        "--long", action="store_true", help=f"also the {LONG_SERIALS:,}-serial scale (full mode; disk checked first)"
    )
    parser.add_argument("--servers", nargs="+", default=list(references.ALL_SERVERS), choices=references.ALL_SERVERS)
    parser.add_argument(
        "--alt-python",
        type=Path,
        metavar="PYTHON",
        help="also run pki-edge (as pki-edge-alt) from the environment of this interpreter (a venv's "
        "bin/python with pki-edge installed), interleaved with the others: two Python builds compared",
    )
    parser.add_argument(
        "--baseline",
        metavar="REV",
        help="also run pki-edge (as pki-edge-base) at this git revision, checked out in a worktree and run by "
        "this interpreter, interleaved with the others: a change against the code before it, in one run",
    )
    parser.add_argument(
        "--cdn-headers",
        action="store_true",
        help="every request carries the nine headers a CDN's cache miss adds (bench/reqset.py CDN_HEADERS), "
        "for every server; wrk alone sends Host",
    )
    parser.add_argument("--rounds", type=int, help="override the mode's rounds")
    parser.add_argument("--seconds", type=float, help="override the mode's seconds per run")
    parser.add_argument("--serials", type=int, help="override the comparison dataset size")
    parser.add_argument("--scale", type=int, nargs="*", help="override the scale dataset sizes (none: skip)")
    parser.add_argument("--skip", nargs="+", default=[], choices=("latency", "revocation", "scale", "signer", "est"))
    parser.add_argument("--work", type=Path, help="working directory (default: a new one under /var/tmp, removed)")
    parser.add_argument("--keep-work", action="store_true", help="keep the working directory (datasets, logs)")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--readme", type=Path, default=HERE / "README.md")
    parser.add_argument("--no-readme", dest="readme", action="store_const", const=None)
    parser.add_argument("--install-tools", action="store_true", help="apt-get install missing tools (root, Debian)")
    args = parser.parse_args(argv)
    # Anything that changes the measurement writes a dated result only, never latest.json or the README.
    args.custom = bool(
        args.rounds
        or args.seconds
        or args.serials
        or args.scale is not None
        or args.skip
        or args.cdn_headers
        or set(args.servers) != set(references.ALL_SERVERS)
    )
    return args


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    needed = ("wrk", "taskset", *(s for s in ("nginx", "openssl", "cfssl") if s in args.servers))
    missing = tools.ensure_tools(needed, args.install_tools, say)
    if missing:
        print(
            f"bench: missing tools: {', '.join(missing)}. Install them with:\n  {tools.INSTALL_HINT}", file=sys.stderr
        )
        return 2
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print(
            "bench: matplotlib is missing: .venv/bin/pip install 'matplotlib>=3.8'  (or pip install -e '.[bench]')",
            file=sys.stderr,
        )
        return 2
    mode = MODES[args.mode]
    overrides: dict[str, Any] = {}
    if args.rounds:
        overrides.update(rounds=args.rounds, latency_rounds=args.rounds, scale_rounds=args.rounds)
    if args.seconds:
        overrides.update(seconds=args.seconds, latency_seconds=args.seconds)
    if args.serials:
        overrides["serials"] = args.serials
    if args.scale is not None:
        overrides["scale_serials"] = tuple(args.scale)
    if args.long:
        overrides["scale_serials"] = (*overrides.get("scale_serials", mode.scale_serials), LONG_SERIALS)
    mode = replace(mode, **overrides)
    with contextlib.suppress(AttributeError, OSError):
        if (os.cpu_count() or 1) >= 2:
            os.sched_setaffinity(0, {1})  # the runner (and what it runs unpinned) stays off the server core
    work = args.work or Path(
        tempfile.mkdtemp(prefix="pki-edge-bench-", dir="/var/tmp" if os.path.isdir("/var/tmp") else None)
    )
    work.mkdir(parents=True, exist_ok=True)
    bench = Bench(mode, args, work, args.out)
    bench.results["config"] = {
        **asdict(mode),
        "server_cpu": bench.server_cpu,
        "load_cpu": bench.load_cpu,
        "hash_algorithms": list(HASH_ALGORITHMS),
        "servers": bench.servers,
        "paced_delay_ms": PACED_DELAY_MS,
        "extra_headers": [name for name, _ in reqset.CDN_HEADERS] if args.cdn_headers else [],
    }
    say(f"pki-edge bench, {mode.name} mode, work directory {work}")
    try:
        if args.baseline is not None:
            commit = references.baseline_checkout(args.baseline, bench.baseline)
            bench.results["versions"]["pki-edge-base"] = f"{args.baseline} = {commit}"
        bench.build_main()
        assert bench.requests is not None
        bench.results["config"]["items"] = len(bench.requests.items)
        say("servers")
        bench.start_servers()
        bench.verify()
        bench.throughput()
        if "latency" not in args.skip:
            bench.stage("latency", bench.latency)
        if "pki-edge" in bench.procs:
            bench.memory(bench.procs["pki-edge"], mode.serials)
        if "revocation" not in args.skip:
            bench.stage("revocation", bench.revocations)
        bench.stop_servers()
        requests = bench.requests
        if "pki-edge" in bench.servers:
            bench.stage("edge start", lambda: bench.edge_start(bench.main_data, mode.serials, requests))
        refresh_data, refresh_serials = bench.main_data, mode.serials
        if "scale" not in args.skip:
            for serials in mode.scale_serials:
                built = bench.stage(f"scale {serials:,}", functools.partial(bench.scale, serials))
                if built is not None:
                    refresh_data, refresh_serials = built, serials
        if "signer" not in args.skip:
            bench.stage("signer", functools.partial(bench.signer, refresh_data, refresh_serials))
        if "est" not in args.skip:
            bench.stage("est", bench.est)
        bench.finish(argv)
    finally:
        bench.stop_servers()
        if args.baseline is not None:
            references.remove_checkout(bench.baseline)
        if args.keep_work or args.work:
            say(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
