"""The external tools the benchmark needs, and the machine and versions it reports."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
import sysconfig
from importlib import metadata
from pathlib import Path

# executable -> Debian package
TOOLS = {
    "wrk": "wrk",
    "nginx": "nginx-light",
    "openssl": "openssl",
    "cfssl": "golang-cfssl",
    "taskset": "util-linux",
}
INSTALL_HINT = "apt-get install -y " + " ".join(sorted(set(TOOLS.values())))


def missing_tools(needed: tuple[str, ...] = tuple(TOOLS)) -> list[str]:
    return [tool for tool in needed if shutil.which(tool) is None and not os.path.exists(f"/usr/sbin/{tool}")]


def ensure_tools(needed: tuple[str, ...], install: bool, say: object = print) -> list[str]:
    """Install what is missing with apt-get when allowed (root, Debian); returns what is still missing."""
    missing = missing_tools(needed)
    if missing and install and os.geteuid() == 0 and shutil.which("apt-get"):
        packages = sorted({TOOLS[t] for t in missing})
        say(f"installing {' '.join(packages)} with apt-get")  # type: ignore[operator]
        subprocess.run(["apt-get", "update", "-qq"], check=False, timeout=600)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages],
            check=False,
            timeout=1200,
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        )
        missing = missing_tools(needed)
    return missing


def _first_line(cmd: list[str]) -> str:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return "not installed"
    text = (proc.stdout + proc.stderr).strip()
    return text.splitlines()[0].strip() if text else "?"


def _package(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def memory_mb() -> int:
    try:
        with open("/proc/meminfo", encoding="ascii") as info:
            for line in info:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) // 1024
    except OSError:
        pass
    return 0


def debian_version(package: str) -> str:
    if not shutil.which("dpkg-query"):
        return "?"
    return _first_line(["dpkg-query", "-W", "-f=${Version}", package])


def virtualization() -> str:
    """E.g. 'KVM guest, docker': the hypervisor (lscpu) and the container (systemd-detect-virt)."""
    parts = []
    if shutil.which("lscpu"):
        for line in subprocess.run(["lscpu"], capture_output=True, text=True, timeout=20).stdout.splitlines():
            if line.startswith("Hypervisor vendor:"):
                parts.append(line.split(":", 1)[1].strip() + " guest")
    if shutil.which("systemd-detect-virt"):
        container = _first_line(["systemd-detect-virt", "--container"])
        if container not in ("none", "?", "not installed"):
            parts.append(container)
    return ", ".join(parts) or "bare metal"


def machine() -> dict[str, object]:
    return {
        "nproc": os.cpu_count(),
        "cpu_model": cpu_model(),
        "kernel": platform.release(),
        "memory_mb": memory_mb(),
        "os": _first_line(["sh", "-c", ". /etc/os-release && echo $PRETTY_NAME"]),
        "virtualization": virtualization(),
    }


def versions() -> dict[str, str]:
    return {
        "python": interpreter(),
        "pki-edge": _package("pki-edge"),
        "uvicorn": _package("uvicorn"),
        "uvloop": _package("uvloop"),
        "httptools": _package("httptools"),
        "cryptography": _package("cryptography"),
        "lmdb": _package("lmdb"),
        "nginx": _first_line(["nginx", "-v"]).replace("nginx version: nginx/", ""),
        "openssl": _first_line(["openssl", "version"]).split(" (")[0].removeprefix("OpenSSL "),
        "cfssl": f"{_first_line(['cfssl', 'version']).removeprefix('Version: ')} "
        f"(Debian golang-cfssl {debian_version('golang-cfssl')})",
        "wrk": _first_line(["wrk", "-v"]).split(" [")[0].removeprefix("wrk ").replace("debian/", "Debian "),
    }


UNOPTIMIZED = "built without --enable-optimizations"


def interpreter() -> str:
    """The running Python: version, executable and build."""
    return f"{platform.python_version()} ({os.path.realpath(sys.executable)}, {python_build()})"


def python_build(config_args: str | None = None, libpython_shared: bool | None = None) -> str:
    """How the running CPython was built, as far as it tells: the build decides much of pki-edge's speed.

    A build without profile-guided optimisation (``./configure`` without ``--enable-optimizations``,
    pyenv's default) served GET about a tenth fewer requests per CPU-second than Debian's in the same
    rounds (bench/README.md, "The interpreter"). Debian and Ubuntu ship a static executable built with PGO and LTO whose
    sysconfig describes the shared library beside it, so there ``CONFIG_ARGS`` cannot tell.
    """
    args = (sysconfig.get_config_var("CONFIG_ARGS") or "") if config_args is None else config_args
    shared = _libpython_mapped() if libpython_shared is None else libpython_shared
    linkage = "shared libpython" if shared else "static executable"
    if "--enable-optimizations" in args:
        return f"{linkage}, --enable-optimizations" + (" --with-lto" if "--with-lto" in args else "")
    if not shared and "--enable-shared" in args:
        return f"{linkage}, a distribution's build"
    return f"{linkage}, {UNOPTIMIZED}"


def python_of(python: Path) -> str:
    """What :func:`interpreter` says in the interpreter ``python`` (another environment's)."""
    repo = Path(__file__).resolve().parent.parent
    code = "from bench.tools import interpreter; print(interpreter())"
    try:
        proc = subprocess.run([str(python), "-c", code], capture_output=True, text=True, timeout=60, cwd=repo)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"? ({exc})"
    return proc.stdout.strip() or f"? ({proc.stderr.strip()[-200:]})"


def _libpython_mapped() -> bool:
    try:
        with open("/proc/self/maps", encoding="ascii", errors="replace") as maps:
            return any("/libpython" in line for line in maps)
    except OSError:
        return False
