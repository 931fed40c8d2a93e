"""`pki-edge backup --out DIR`: a consistent copy of a data directory, taken while the signer runs.

A copy of ``data.mdb`` made with cp while the signer commits can be torn (pages of two transactions);
LMDB's own copy reads one snapshot, as any reader does, and writes it compacted. The keys are copied
after the snapshot, and the copy is checked against it: every key its registry names must be there. A
responder renewed in between (its old key removed once the registry names the new one) would leave a
registry without its key: the copy is then taken again.

``DIR`` is a data directory itself (store, signer keys, pki-edge.toml): any command takes it as
``--data``, and restoring is putting it in place with the signer stopped (README, "Data directory").
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from contract import store
from contract.config import CONFIG_FILE
from signer.keys import write_new_file
from signer.registry import responder_key_file
from signer.state import SignerError, SignerStore, key_path, keys_dir

ATTEMPTS = 3


@dataclass(frozen=True)
class BackupSummary:
    store_bytes: int
    issuers: int
    serials: int
    key_files: int
    config: bool


def back_up(st: SignerStore, out: Path) -> BackupSummary:
    """Copy ``st``'s data directory to ``out``, a new directory (mode 0700: it holds the keys)."""
    if out.exists() or out.is_symlink():
        raise SignerError(f"{out} already exists: give a new directory for the backup")
    try:
        out.mkdir(parents=True, mode=0o700)
    except OSError as exc:
        raise SignerError(f"cannot create {out}: {exc.strerror}") from None
    try:
        missing: list[Path] = []
        for _ in range(ATTEMPTS):
            for part in ("store", "signer"):
                shutil.rmtree(out / part, ignore_errors=True)
            summary, missing = _copy_once(st, out)
            if not missing:
                _sync_dir(out)
                return summary
        raise SignerError(
            f"the store names keys that are not in {st.data_dir / 'signer' / 'keys'}: "
            + ", ".join(path.name for path in missing)
            + " (a key file removed by hand?)"
        )
    except BaseException:  # a disk full, an interrupt: no half backup is left to be taken for a whole one
        shutil.rmtree(out, ignore_errors=True)
        raise


def _copy_once(st: SignerStore, out: Path) -> tuple[BackupSummary, list[Path]]:
    """One snapshot of the store, then the keys; the keys the snapshot's registry needs and lacks."""
    copy = out / "store"
    copy.mkdir(mode=0o750)
    st.env.copy(os.fspath(copy), compact=True)
    keys_out = out / "signer" / "keys"
    keys_out.mkdir(parents=True, mode=0o700)
    keys_in = keys_dir(st.data_dir)
    key_files = 0
    for path in sorted(keys_in.iterdir()) if keys_in.is_dir() else []:
        if path.is_file() and not path.is_symlink():
            _copy_private(path, keys_out / path.name)
            key_files += 1
    (out / "signer").chmod(0o700)
    config = st.data_dir / CONFIG_FILE
    if config.is_file():
        shutil.copyfile(config, out / CONFIG_FILE)
    env = store.open_env(out, readonly=True, map_size=st.config.store.map_size_mb << 20)
    try:
        dbs = store.open_dbs(env, readonly=True)
        with env.begin() as txn:
            records = [store.ISSUER_DECODER.decode(v) for _, v in txn.cursor(db=dbs[store.DB_ISSUERS])]
            serials = int(txn.stat(dbs[store.DB_INVENTORY])["entries"])
    finally:
        env.close()
    missing = [
        path for record in records for path in _needed_keys(st.data_dir, record) if not (keys_out / path.name).exists()
    ]
    size = (copy / "data.mdb").stat().st_size
    return BackupSummary(size, len(records), serials, key_files, config.is_file()), missing


def _needed_keys(data_dir: Path, record: store.IssuerRecord) -> list[Path]:
    """The key files the registry entry is signed or issued with (signer.registry's names)."""
    needed = [key_path(data_dir, record.name)] if record.signing == "ca" else []
    if record.responder_cert_der is not None:
        needed.append(responder_key_file(data_dir, record.name, record.responder_cert_der))
    return needed


def _copy_private(source: Path, target: Path) -> None:
    """A key file copied as the signer writes one: created new, 0600, on disk before it counts."""
    data = source.read_bytes()
    write_new_file(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), target, data)


def _sync_dir(out: Path) -> None:
    for directory in (out / "signer" / "keys", out / "signer", out / "store", out):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
