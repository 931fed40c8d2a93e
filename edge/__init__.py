"""The internet-facing edge: serves precomputed OCSP responses, never holds a CA key."""
