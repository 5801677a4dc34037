"""LSRM: multilevel encoder ensemble, SRProj, inheritable cross-attention."""
