"""The signer side: CA keys, certificate inventory, and the background OCSP precompute loop."""
