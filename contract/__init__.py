"""The contract shared by the edge and the signer.

`edge/` never imports `signer/`; both import this package, which owns the
LMDB layout (`contract.store`) and the configuration (`contract.config`).
"""
