"""Differential conformance: the same scenarios run on pybeam and on BEAM itself."""
