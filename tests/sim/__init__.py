"""Tests of pybeam.testing.sim: simulated clusters under faults."""
