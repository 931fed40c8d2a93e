"""Feeding the references the same data, and the runner's small helpers."""

from __future__ import annotations

import base64
import datetime as dt
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from bench import references, reqset, run
from bench.dataset import Serial
from signer.certs import make_ca_certificate
from signer.keys import generate_key


def test_static_files_nest_at_the_decoded_get_path(tmp_path: Path):
    der = bytes(range(256))  # its base64 holds '/' and '+'
    name = reqset.static_file_name(der)
    assert "/" in name and "+" in name
    assert references.export_static_files(tmp_path, [(name, b"response")]) == 1
    assert (tmp_path / name).read_bytes() == b"response"


def test_cfssl_file_is_one_base64_response_per_line(tmp_path: Path):
    assert references.export_cfssl_responses(tmp_path / "r.txt", [b"\x30\x03\x0a\x01\x00", b"\x30\x00"]) == 2
    lines = (tmp_path / "r.txt").read_text().splitlines()
    assert [base64.b64decode(line) for line in lines] == [b"\x30\x03\x0a\x01\x00", b"\x30\x00"]


def test_nginx_conf(tmp_path: Path):
    conf = references.nginx_conf(tmp_path / "root", tmp_path / "tmp", 18080, as_root=True)
    for needle in (
        "worker_processes 1;",
        "daemon off;",
        "access_log off;",
        "default_type application/ocsp-response;",
        "listen 127.0.0.1:18080;",
        "merge_slashes off;",
        f"root {tmp_path / 'root'};",
        f"pid {tmp_path / 'tmp'}/nginx.pid;",
        "user root;",
    ):
        assert needle in conf
    assert "user root" not in references.nginx_conf(tmp_path, tmp_path, 1, as_root=False)


def test_specs_cover_every_server():
    # pki-edge-alt and pki-edge-base by --alt-python and --baseline only
    assert set(references.SPECS) == {*references.ALL_SERVERS, "pki-edge-alt", "pki-edge-base"}
    assert references.SPECS["nginx"].methods == {"GET"}
    assert references.SPECS["cfssl"].methods == {"POST"}
    assert references.SPECS["openssl"].fresh_per_run


def test_alt_pki_edge_is_the_one_beside_the_venv_python(tmp_path: Path):
    bin_dir = tmp_path / "venv" / "bin"
    bin_dir.mkdir(parents=True)
    (tmp_path / "python3.11").touch()
    (bin_dir / "python").symlink_to(tmp_path / "python3.11")  # as venv makes it: not followed
    with pytest.raises(SystemExit, match="pip install"):
        references.alt_pki_edge(bin_dir / "python")
    (bin_dir / "pki-edge").touch()
    assert references.alt_pki_edge(bin_dir / "python") == str(bin_dir / "pki-edge")


def test_alt_python_adds_a_server_without_making_the_run_custom():
    args = run.parse_args(["--mode", "full", "--alt-python", "/opt/venv/bin/python"])
    assert args.alt_python == Path("/opt/venv/bin/python")
    assert not args.custom


def test_baseline_adds_a_server_next_to_pki_edge_without_making_the_run_custom(tmp_path: Path):
    args = run.parse_args(["--baseline", "HEAD~1", "--alt-python", "/opt/venv/bin/python"])
    assert args.baseline == "HEAD~1"
    assert not args.custom
    bench = run.Bench(run.MODES["quick"], args, tmp_path, tmp_path)
    assert bench.servers[:3] == ["pki-edge", "pki-edge-alt", "pki-edge-base"]
    assert bench.baseline == tmp_path / "baseline"


def _worktrees() -> str:
    listed = subprocess.run(["git", "-C", str(references.REPO), "worktree", "list"], capture_output=True, text=True)
    return listed.stdout


def test_baseline_checkout_runs_that_revision_s_code_and_is_removed(tmp_path: Path):
    where = tmp_path / "baseline"
    head = subprocess.run(["git", "-C", str(references.REPO), "rev-parse", "HEAD"], capture_output=True, text=True)
    try:
        assert references.baseline_checkout("HEAD", where) == head.stdout.strip()
        assert (where / "edge" / "app.py").exists() and str(where) in _worktrees()
        # What start_pki_edge runs with source=where: this interpreter's pki-edge, importing where's code
        # (-P: as a console script, the working directory not first on the path; here, this checkout).
        env = references.code_of(where)
        for package in ("edge", "signer", "contract"):
            found = subprocess.run(
                [sys.executable, "-P", "-c", f"import {package}; print({package}.__file__)"],
                cwd=references.REPO,
                env=env,
                capture_output=True,
                text=True,
                check=True,
            )
            assert Path(found.stdout.strip()).parent == where / package
    finally:
        references.remove_checkout(where)
    assert not where.exists() and str(where) not in _worktrees()
    references.remove_checkout(where)  # twice (or never made): nothing happens


def test_baseline_checkout_names_a_revision_it_cannot_find(tmp_path: Path):
    with pytest.raises(SystemExit, match="--baseline no-such-revision: not a commit"):
        references.baseline_checkout("no-such-revision", tmp_path / "baseline")
    assert not (tmp_path / "baseline").exists()
    (tmp_path / "baseline").mkdir()
    (tmp_path / "baseline" / "left-over").touch()  # a kept work directory's earlier checkout, say
    with pytest.raises(SystemExit, match="--baseline HEAD: cannot check it out at"):
        references.baseline_checkout("HEAD", tmp_path / "baseline")
    assert str(tmp_path / "baseline") not in _worktrees()


def test_paced_connections():
    assert run.paced_connections(3000) == (32, 10)  # 3000 req/s × 10.5 ms
    assert run.paced_connections(1) == (1, 10)
    connections, delay = run.paced_connections(1_000_000)
    assert connections == 1000 and delay == 1


def test_rotated():
    assert run.rotated(["a", "b", "c"], 0) == ["a", "b", "c"]
    assert run.rotated(["a", "b", "c"], 4) == ["b", "c", "a"]
    assert run.rotated([], 3) == []


def test_request_set_files(tmp_path: Path):
    ca = make_ca_certificate("rs", generate_key("ec-p256"), 30, dt.datetime.now(dt.UTC)).public_bytes(Encoding.DER)
    sample = [Serial(1000 + i, i == 3) for i in range(20)]
    rs = run.make_request_set(ca, sample, tmp_path, 100, 1, run.MIXES)
    assert len(rs.items) + rs.excluded == 40
    for mix in run.MIXES:
        lines = rs.mixes[mix].read_text().splitlines()
        assert len(lines) == 100 == len(rs.chosen[mix])
        assert all(line.startswith(mix.split("-")[0].upper() + " /") for line in lines)


def test_reproduce_command_names_the_make_target_and_its_variables(tmp_path: Path):
    repo = Path(run.__file__).resolve().parent.parent
    argv = ["--mode", "full", "--install-tools"]
    assert run.reproduce_command("full", argv, False, repo / ".venv") == (
        "make bench-full   # = python -m bench.run --mode full --install-tools"
    )
    other = tmp_path / "venv"
    (other / "bin").mkdir(parents=True)
    (other / "bin" / "python").symlink_to("/usr/bin/python3")
    command = run.reproduce_command("quick", [*argv[2:], "--alt-python", ".venv/bin/python"], False, other)
    python = str(Path("/usr/bin/python3").resolve())
    assert command.startswith(f"make bench PYTHON={python} VENV=")
    assert " BENCH_ARGS='--alt-python .venv/bin/python'   # = python -m bench.run --install-tools --alt" in command
    assert run.reproduce_command("full", [*argv, "--rounds", "1"], True, repo / ".venv") == (
        "python -m bench.run --mode full --install-tools --rounds 1"
    )


def test_describe_shows_steal_when_the_kernel_counts_it():
    runs = {
        "round": 2,
        "mix": "get-uniform",
        "server": "pki-edge",
        "rps": 1000.0,
        "req_per_cpu_s": 1100.0,
        "server_cpu_util": 0.9,
        "client_cpu_util": 0.5,
        "latency_us": {"p50": 400.0, "p99": 2000.0},
        "error_count": 0,
    }
    assert "steal" not in run.describe(runs)
    line = run.describe({**runs, "server_core_steal": 0.125})
    assert "steal  12%  p50   0.40 ms  p99   2.00 ms" in line
