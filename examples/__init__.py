"""pybeam's example applications: the training's parts, runnable as demos."""
