"""Turning measured runs into medians, ratios, goal verdicts, the table, the JSON and the README section."""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from bench import est as est_stage

README_START = "<!-- bench:results:start -->"
README_END = "<!-- bench:results:end -->"

# For each method, the reference every other server is divided by (GET: nginx static; POST: cfssl).
REFERENCES = {"GET": ("nginx", "cfssl"), "POST": ("nginx", "cfssl")}


def median(values: Iterable[float]) -> float | None:
    data = [v for v in values if v is not None]
    return statistics.median(data) if data else None


def mix_method(mix: str) -> str:
    return mix.split("-")[0].upper()


def _by(runs: Iterable[dict[str, Any]], server: str, mix: str) -> dict[int, dict[str, Any]]:
    return {r["round"]: r for r in runs if r["server"] == server and r["mix"] == mix}


def ratio_per_round(runs: Sequence[dict[str, Any]], server: str, reference: str, mix: str, key: str) -> list[float]:
    """server/reference of ``key`` for every round where both were measured."""
    mine, theirs = _by(runs, server, mix), _by(runs, reference, mix)
    return [
        mine[r][key] / theirs[r][key]
        for r in sorted(mine)
        if r in theirs and theirs[r].get(key) and mine[r].get(key) is not None
    ]


def summarize(runs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (server, mix): medians over rounds and the median of per-round ratios to the references."""
    rows = []
    keys = sorted({(r["server"], r["mix"]) for r in runs}, key=lambda k: (k[1], _server_order(k[0])))
    for server, mix in keys:
        mine = list(_by(runs, server, mix).values())
        row: dict[str, Any] = {
            "server": server,
            "mix": mix,
            "rounds": len(mine),
            "rps": median(r["rps"] for r in mine),
            "rps_min": min(r["rps"] for r in mine),
            "rps_max": max(r["rps"] for r in mine),
            "req_per_cpu_s": median(r["req_per_cpu_s"] for r in mine),
            "req_per_cpu_s_min": min((r["req_per_cpu_s"] or 0) for r in mine),
            "req_per_cpu_s_max": max((r["req_per_cpu_s"] or 0) for r in mine),
            "p50_ms": median(r["latency_us"].get("p50", 0) / 1000 for r in mine),
            "p99_ms": median(r["latency_us"].get("p99", 0) / 1000 for r in mine),
            "errors": sum(r["error_count"] for r in mine),
            "requests": sum(r["requests"] for r in mine),
            "server_cpu_util": median(r["server_cpu_util"] for r in mine),
            "client_cpu_util": median(r["client_cpu_util"] for r in mine),
            "bytes_per_response": median(r["bytes_per_response"] for r in mine),
        }
        for reference in REFERENCES[mix_method(mix)]:
            for key, label in (("rps", "rps"), ("req_per_cpu_s", "cpu")):
                ratios = ratio_per_round(runs, server, reference, mix, key)
                mine_too = server != reference and ratios
                row[f"x_{reference}_{label}"] = median(ratios) if mine_too else None
                # The spread of the rounds: a goal's threshold inside it is one the run cannot decide.
                row[f"x_{reference}_{label}_range"] = (min(ratios), max(ratios)) if mine_too else None
        rows.append(row)
    return rows


SERVER_ORDER = (
    "pki-edge",
    "pki-edge-base",
    "pki-edge-alt",
    "pki-edge-asgi",
    "python-floor",
    "nginx",
    "cfssl",
    "openssl",
)


def _server_order(name: str) -> int:
    return SERVER_ORDER.index(name) if name in SERVER_ORDER else len(SERVER_ORDER)


# ------------------------------------------------------------------------------------------------ format


def fmt(value: float | None, spec: str = ".0f", suffix: str = "") -> str:
    return "n/a" if value is None else f"{value:{spec}}{suffix}"


def table(rows: Sequence[dict[str, Any]]) -> str:
    """The main table, GitHub markdown."""
    head = (
        "| server | mix | req/s | req/CPU-s | × nginx req/s | × nginx req/CPU-s | × cfssl req/s | × cfssl req/CPU-s "
        "| p50 ms | p99 ms | errors | server CPU | wrk CPU |"
    )
    lines = [head, "|" + "---|" * 13]
    for row in rows:
        lines.append(
            "| "
            + " | ".join(
                [
                    row["server"],
                    row["mix"],
                    fmt(row["rps"]),
                    fmt(row["req_per_cpu_s"]),
                    fmt(row.get("x_nginx_rps"), ".2f", "×"),
                    fmt(row.get("x_nginx_cpu"), ".2f", "×"),
                    fmt(row.get("x_cfssl_rps"), ".2f", "×"),
                    fmt(row.get("x_cfssl_cpu"), ".2f", "×"),
                    fmt(row["p50_ms"], ".2f"),
                    fmt(row["p99_ms"], ".2f"),
                    str(row["errors"]),
                    fmt(100 * row["server_cpu_util"] if row["server_cpu_util"] is not None else None, ".0f", "%"),
                    fmt(100 * row["client_cpu_util"] if row["client_cpu_util"] is not None else None, ".0f", "%"),
                ]
            )
            + " |"
        )
    return "\n".join(lines)


def latency_table(rows: Sequence[dict[str, Any]]) -> str:
    lines = [
        "| server | mix | offered ≈ req/s | achieved req/s | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | errors "
        "| server CPU | CPU µs per request, user + system |",
        "|" + "---|" * 12,
    ]
    for row in rows:
        cpu = row.get("cpu_util")
        user, system = row.get("user_us"), row.get("system_us")
        split = f"{user:.1f} + {system:.1f}" if user is not None and system is not None else "n/a"
        lines.append(
            f"| {row['server']} | {row['mix']} | {fmt(row['target_rps'])} | {fmt(row['rps'])} | "
            f"{fmt(row['p50_ms'], '.2f')} | {fmt(row['p90_ms'], '.2f')} | {fmt(row['p99_ms'], '.2f')} | "
            f"{fmt(row['p99.9_ms'], '.2f')} | {fmt(row['max_ms'], '.1f')} | {row['errors']} | "
            f"{f'{cpu:.0%}' if cpu is not None else 'n/a'} | {split} |"
        )
    return "\n".join(lines)


def summarize_latency(runs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for server, mix in sorted({(r["server"], r["mix"]) for r in runs}, key=lambda k: (k[1], _server_order(k[0]))):
        mine = [r for r in runs if r["server"] == server and r["mix"] == mix]
        row: dict[str, Any] = {
            "server": server,
            "mix": mix,
            "rounds": len(mine),
            "target_rps": mine[0]["target_rps"],
            "connections": mine[0]["connections"],
            "delay_ms": mine[0]["delay_ms"],
            "rps": median(r["rps"] for r in mine),
            "errors": sum(r["error_count"] for r in mine),
        }
        for p in ("p50", "p75", "p90", "p99", "p99.9", "max"):
            row[f"{p}_ms"] = median(r["latency_us"].get(p, 0) / 1000 for r in mine)
        p99s = [r["latency_us"].get("p99", 0) / 1000 for r in mine]
        row["p99_range_ms"] = (min(p99s), max(p99s))
        # Where the CPU goes at this rate, beside the same figures at saturation (cpu_split_line).
        row["cpu_util"] = (
            median(r["server_cpu_util"] for r in mine) if all("server_cpu_util" in r for r in mine) else None
        )
        split = [r for r in mine if r.get("requests") and "server_user_s" in r]
        row["user_us"] = median(r["server_user_s"] / r["requests"] * 1e6 for r in split) if split else None
        row["system_us"] = median(r["server_system_s"] / r["requests"] * 1e6 for r in split) if split else None
        rows.append(row)
    return rows


# ------------------------------------------------------------------------------------------------ goals


def _verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("PASS" if ok else "FAIL")


def _row(rows: Sequence[dict[str, Any]], server: str, mix: str) -> dict[str, Any] | None:
    return next((r for r in rows if r["server"] == server and r["mix"] == mix), None)


def goals(results: dict[str, Any]) -> list[dict[str, str]]:
    """Each goal of the issue with the measured value and a verdict (n/a when not measured)."""
    out: list[dict[str, str]] = []
    rows = results.get("summary", [])

    def add(goal: str, value: str, ok: bool | None) -> None:
        out.append({"goal": goal, "measured": value, "verdict": _verdict(ok)})

    for mix in ("get-uniform", "get-zipf"):
        row = _row(rows, "pki-edge", mix)
        if row:
            rps, cpu = row.get("x_nginx_rps"), row.get("x_nginx_cpu")
            ok = None if rps is None or cpu is None else (rps >= 1.0 and cpu >= 1.0)
            add(
                f"{mix}: ≥ 1.0× nginx static (req/s and req/CPU-s)",
                f"{fmt(rps, '.2f')}× req/s, {fmt(cpu, '.2f')}× req/CPU-s" + _spread(row, "nginx", 1.0),
                ok,
            )
    for mix in ("post-uniform", "post-zipf"):
        row = _row(rows, "pki-edge", mix)
        if row:
            get_row = _row(rows, "nginx", mix.replace("post", "get"))
            indication = ""
            if get_row and get_row["rps"] and get_row["req_per_cpu_s"] and row["rps"] and row["req_per_cpu_s"]:
                indication = (
                    f" (against nginx's GET of the same rounds: {row['rps'] / get_row['rps']:.2f}× req/s, "
                    f"{row['req_per_cpu_s'] / get_row['req_per_cpu_s']:.2f}× req/CPU-s)"
                )
            add(f"{mix}: ≥ 1.0× nginx static", "nginx serves no POST" + indication, None)
    for mix in ("post-uniform", "post-zipf", "get-uniform", "get-zipf"):
        row = _row(rows, "pki-edge", mix)
        if row:
            rps, cpu = row.get("x_cfssl_rps"), row.get("x_cfssl_cpu")
            ok = None if rps is None or cpu is None else (rps >= 3.0 and cpu >= 3.0)
            if ok is not None:
                value = f"{fmt(rps, '.2f')}× req/s, {fmt(cpu, '.2f')}× req/CPU-s" + _spread(row, "cfssl", 3.0)
            elif mix_method(mix) == "GET":
                value = "cfssl's Debian build answers no GET (400)"
            else:
                value = "cfssl not measured"
            add(f"{mix}: ≥ 3× cfssl", value, ok)
    latency_rows = results.get("latency", {}).get("summary", [])
    for row in latency_rows:
        if row["server"] == "pki-edge" and "/" not in row["mix"]:  # "get-uniform/10": a lower rate, no goal
            refs = [r for r in latency_rows if r["mix"] == row["mix"] and r["server"] != "pki-edge"]
            beside = ", ".join(f"{ref['server']} {fmt(ref['p99_ms'], '.2f')} ms" for ref in refs)
            beside = f"; {beside} at the same rate" if beside else ""
            quiet = [r for r in latency_rows if r["mix"].startswith(row["mix"] + "/")]
            if quiet:
                beside += f"; at {fmt(quiet[0]['target_rps'])} req/s: " + ", ".join(
                    f"{r['server']} {fmt(r['p99_ms'], '.2f')} ms" for r in quiet
                )
            add(
                f"{row['mix']} at half of pki-edge's saturation ({fmt(row['target_rps'])} req/s): p99 ≤ 2 ms",
                f"p99 {fmt(row['p99_ms'], '.2f')} ms{_p99_spread(row, 2.0)}{beside}",
                row["p99_ms"] is not None and row["p99_ms"] <= 2.0,
            )
    for entry in results.get("scale", {}).get("cost_ratios", []):
        add(
            f"{entry['mix']}: per-request CPU with {entry['serials']:,} serials "
            f"≤ 1.3× the {entry['baseline']:,} figure",
            f"{entry['ratio']:.2f}×",
            entry["ratio"] <= 1.3,
        )
    for entry in results.get("edge_memory", []):
        add(
            f"edge worker RSS < 100 MB ({entry['serials']:,} serials, after load)",
            f"VmRSS {entry['VmRSS'] / 1024:.0f} MB (private RssAnon {entry['RssAnon'] / 1024:.0f} MB, "
            f"mapped LMDB RssFile {entry['RssFile'] / 1024:.0f} MB)",
            entry["VmRSS"] < 100 * 1024,
        )
    for entry in results.get("edge_start", []):
        add(
            f"edge worker serving within 1 s of start ({entry['serials']:,} serials)",
            f"median {entry['median_s']:.2f} s, max {entry['max_s']:.2f} s",
            entry["max_s"] <= 1.0,
        )
    for build in results.get("signer", {}).get("rates", []):
        target = 0.8 if build["key"].startswith("ec") else 0.95
        add(
            f"signer {build['key']} ({build['serials']:,} serials): signed+stored ≥ {target:.0%} of raw sign()",
            f"{build['ratio']:.1%} ({build['responses_per_cpu_second']:.0f} "
            f"vs {build['raw_per_cpu_second']:.0f}/CPU-s)",
            build["ratio"] >= target,
        )
    for refresh in results.get("signer", {}).get("refresh", []):
        add(
            f"full refresh of {refresh['serials']:,} serials × 2 on {refresh['cores']} core(s)",
            f"{refresh['wall_seconds']:.1f} s wall ({refresh['responses_per_wall_second']:.0f} responses/s)",
            None,
        )
    revocation = results.get("revocation")
    if revocation and revocation.get("delays_s"):
        add(
            f"revocation propagation under load, p99 over {len(revocation['delays_s'])} revocations ≤ 1 s",
            f"p50 {revocation['p50_s'] * 1000:.0f} ms, p99 {revocation['p99_s'] * 1000:.0f} ms, "
            f"max {revocation['max_s'] * 1000:.0f} ms",
            revocation["p99_s"] <= 1.0 and not revocation.get("missed"),
        )
    out += est_stage.goal_rows(results.get("est"))
    return out


def _spread(row: dict[str, Any], reference: str, threshold: float) -> str:
    """The rounds' range of the req/CPU-s ratio, and whether it straddles the goal's threshold (≥)."""
    spread = row.get(f"x_{reference}_cpu_range")
    if not spread or row.get("rounds", 0) < 2:
        return ""
    low, high = spread
    return _rounds(low, high, "× req/CPU-s", low < threshold <= high)


def _p99_spread(row: dict[str, Any], limit: float) -> str:
    """The rounds' range of p99, and whether it straddles the goal's limit (≤)."""
    spread = row.get("p99_range_ms")
    if not spread or row.get("rounds", 0) < 2:
        return ""
    low, high = spread
    return _rounds(low, high, " ms", low <= limit < high)


def _rounds(low: float, high: float, unit: str, straddles: bool) -> str:
    undecided = "; the threshold lies inside it: not decided by this run" if straddles else ""
    return f" (rounds {low:.2f}-{high:.2f}{unit}{undecided})"


def goals_table(rows: Sequence[dict[str, str]]) -> str:
    lines = ["| goal | measured | verdict |", "|---|---|---|"]
    lines += [f"| {g['goal']} | {g['measured']} | {g['verdict']} |" for g in rows]
    return "\n".join(lines)


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100)."""
    data = sorted(values)
    if not data:
        raise ValueError("no values")
    rank = max(1, min(len(data), math.ceil(p * len(data) / 100 - 1e-9)))
    return data[rank - 1]


# ------------------------------------------------------------------------------------------------ output


def write_json(path: Path, results: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1, sort_keys=False, default=str) + "\n")


def extra_headers(cfg: dict[str, Any]) -> str:
    """How every request differs from wrk's own (Host alone), or "" when it does not."""
    names = cfg.get("extra_headers") or []
    return f"with {len(names)} more headers, as a CDN sends them ({', '.join(names)})" if names else ""


def steal_line(runs: list[dict[str, Any]]) -> str:
    """How much of the server core the hypervisor gave to others during the throughput runs."""
    steals = sorted(r["server_core_steal"] for r in runs if r.get("server_core_steal") is not None)
    if not steals:
        return ""
    worst = max(runs, key=lambda r: r.get("server_core_steal") or 0.0)
    return (
        f"Steal time on the server core (the hypervisor running other guests there): median "
        f"{statistics.median(steals):.1%} of a run, highest {steals[-1]:.1%} "
        f"(round {worst['round']}, {worst['mix']}, {worst['server']})."
    )


def section(results: dict[str, Any]) -> str:
    """The generated part of bench/README.md."""
    cfg = results["config"]
    machine, versions = results["machine"], results["versions"]
    parts = [
        README_START,
        "",
        f"Run of {results['started']} ({results['mode']} mode, {results['duration_s'] / 60:.1f} min), reproduced with:",
        "",
        "```sh",
        results["command"],
        "```",
        "",
        f"Machine: {machine['nproc']} × {machine['cpu_model']}, {machine['memory_mb'] // 1024} GB, "
        f"Linux {machine['kernel']}, {machine['os']} ({machine['virtualization']}). "
        f"Servers pinned to CPU {cfg['server_cpu']}, wrk and the runner to CPU {cfg['load_cpu']}.",
        "",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()) + ".",
        "",
        f"Dataset: {cfg['serials']:,} serials (a tenth revoked) × {len(cfg['hash_algorithms'])} hash algorithms; "
        f"{cfg['items']:,} distinct requests, mixes of {cfg['mix_length']:,}; "
        f"{cfg['rounds']} rounds × {cfg['seconds']:g} s per server and mix "
        f"(openssl {cfg['openssl_seconds']:g} s), interleaved; wrk -t1 -c{cfg['connections']}, keep-alive"
        + (f"; every request {headers}" if (headers := extra_headers(cfg)) else "")
        + ".",
        "",
        "### Throughput (medians over rounds; ratios are medians of per-round ratios)",
        "",
        table(results["summary"]),
        "",
    ]
    steal = steal_line(results["runs"])
    if steal:
        parts += [steal, ""]
    latency = results.get("latency", {})
    if latency.get("summary"):
        parts += [
            "### Latency at a fixed offered rate (half of pki-edge's saturation req/s; `/10`: a tenth of it)",
            "",
            latency_table(latency["summary"]),
            "",
        ]
    parts += ["### Goals", "", goals_table(results["goals"]), ""]
    extra = extras(results)
    if extra:
        parts += ["### Scale, memory, start-up, signer, revocation, EST", "", *extra, ""]
    parts += [
        "![throughput](results/throughput.png)",
        "",
        "![latency](results/latency.png)",
        "",
        README_END,
    ]
    return "\n".join(parts)


def cpu_split_line(runs: Sequence[dict[str, Any]], mix: str = "get-uniform") -> str | None:
    """Median user and system CPU per request of each server on ``mix`` (saturated runs)."""
    per_server: dict[str, list[tuple[float, float]]] = {}
    for run in runs:
        if run.get("mix") == mix and run.get("requests") and "server_user_s" in run:
            per_request = (run["server_user_s"] / run["requests"], run["server_system_s"] / run["requests"])
            per_server.setdefault(run["server"], []).append(per_request)
    if not per_server:
        return None
    parts = []
    for server, split in sorted(per_server.items(), key=lambda item: _server_order(item[0])):
        user, system = statistics.median(u for u, _ in split), statistics.median(s for _, s in split)
        parts.append(f"{server} {user * 1e6:.1f} + {system * 1e6:.1f}")
    return f"- CPU per request, {mix}, user + system µs (medians over rounds): " + "; ".join(parts) + "."


def against_other_pki_edges(results: dict[str, Any]) -> list[str]:
    """pki-edge against the pki-edge of another revision or interpreter measured in the same rounds."""
    runs = results.get("runs", [])
    lines = []
    for other, what in (("pki-edge-base", "pki-edge-base"), ("pki-edge-alt", "python of pki-edge-alt")):
        parts = []
        for mix in sorted({r["mix"] for r in runs if r["server"] == other}):
            ratios = ratio_per_round(runs, "pki-edge", other, mix, "req_per_cpu_s")
            if ratios:
                parts.append(f"{mix} {statistics.median(ratios):.2f}× ({', '.join(f'{x:.2f}' for x in ratios)})")
        if parts:
            label = results.get("versions", {}).get(what, "")
            lines.append(
                f"- pki-edge against {other} ({label}), req/CPU-s, median of the per-round ratios (each round's): "
                + "; ".join(parts)
                + "."
            )
    return lines


def extras(results: dict[str, Any]) -> list[str]:
    lines = against_other_pki_edges(results)
    split = cpu_split_line(results.get("runs", []))
    if split is not None:
        lines.append(split)
    for build in results.get("signer", {}).get("builds", []):
        sign = build["sign"]
        lines.append(
            f"- Dataset {build['serials']:,} × {build['key']}: index.txt {build['index_seconds']:.1f} s, "
            f"`pki-edge import` {build['import_seconds']:.1f} s, signing {sign['responses']:,} responses "
            f"{sign['wall_seconds']:.1f} s wall / {sign['cpu_seconds']:.1f} CPU-s on one core "
            f"({sign['responses_per_cpu_second']:.0f}/CPU-s; "
            f"raw sign() between batches {sign['raw_signs_per_cpu_second']:.0f}/CPU-s)."
        )
    for refresh in results.get("signer", {}).get("refresh", []):
        lines.append(
            f"- Full refresh, {refresh['serials']:,} serials × 2 on {refresh['cores']} core(s) ({refresh['how']}): "
            f"{refresh['wall_seconds']:.1f} s wall, {refresh['responses_per_wall_second']:.0f} responses/s."
        )
    for entry in results.get("scale", {}).get("cost_ratios", []):
        lines.append(
            f"- {entry['mix']}: {entry['serials']:,} serials {entry['cost_us']:.1f} µs CPU/request vs "
            f"{entry['baseline_cost_us']:.1f} µs with {entry['baseline']:,} ({entry['ratio']:.2f}×, "
            f"median of {entry['rounds']} interleaved rounds)."
        )
    for entry in results.get("edge_start", []):
        lines.append(
            f"- Edge start to first OCSP answer ({entry['serials']:,} serials): "
            + ", ".join(f"{s:.2f}" for s in entry["samples_s"])
            + " s."
        )
    for entry in results.get("edge_memory", []):
        lines.append(
            f"- Edge worker memory after load ({entry['serials']:,} serials): VmRSS {entry['VmRSS'] / 1024:.0f} MB, "
            f"RssAnon {entry['RssAnon'] / 1024:.0f} MB, RssFile {entry['RssFile'] / 1024:.0f} MB (LMDB pages mapped)."
        )
    revocation = results.get("revocation")
    if revocation and revocation.get("delays_s"):
        lines.append(
            f"- Revocation propagation: {len(revocation['delays_s'])} revocations under wrk load "
            f"({revocation['load_rps']:.0f} req/s on the edge, signer on the server core): p50 "
            f"{revocation['p50_s'] * 1000:.0f} ms, p99 {revocation['p99_s'] * 1000:.0f} ms, max "
            f"{revocation['max_s'] * 1000:.0f} ms, missed {revocation['missed']}."
        )
    lines += est_stage.extra_lines(results.get("est"))
    for note in results.get("notes", []):
        lines.append(f"- {note}")
    return lines


def update_readme(path: Path, generated: str) -> None:
    """Replace the marked section of the README (or append it)."""
    text = path.read_text() if path.exists() else ""
    start, end = text.find(README_START), text.find(README_END)
    if start >= 0 and end > start:
        text = text[:start] + generated + text[end + len(README_END) :]
    else:
        text = text.rstrip("\n") + "\n\n" + generated + "\n"
    path.write_text(text)
