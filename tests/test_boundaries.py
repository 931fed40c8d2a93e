"""The architecture's boundaries, checked on the source: the edge never imports the signer,
and private keys are only loaded by signer-side code."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_edge_never_imports_signer():
    offenders = {
        str(path.relative_to(ROOT)): sorted(m for m in imported_modules(path) if m.split(".")[0] == "signer")
        for path in (ROOT / "edge").rglob("*.py")
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_contract_imports_neither_side():
    for path in (ROOT / "contract").rglob("*.py"):
        assert not {m.split(".")[0] for m in imported_modules(path)} & {"edge", "signer"}, path


def test_private_keys_are_loaded_only_on_the_signer_side():
    loaders = ("load_pem_private_key", "load_der_private_key", "load_private_key")
    for package in ("edge", "contract"):
        for path in (ROOT / package).rglob("*.py"):
            text = path.read_text()
            assert not any(name in text for name in loaders), f"{path} loads a private key"


def test_boundary_check_sees_a_violation(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("from signer.keys import load_private_key\nimport signer.state\n")
    assert {"signer.keys", "signer.state"} <= imported_modules(bad)
