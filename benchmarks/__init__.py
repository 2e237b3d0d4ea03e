"""pybeam's benchmarks: ``python -m benchmarks`` prints a table of figures and targets."""
