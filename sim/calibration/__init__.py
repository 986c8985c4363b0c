"""Offline calibration data: measured kernel latencies turned into tidy tables (issue 19).

Nothing here runs during a simulation; the engine reads only the fitted figures in the
hardware files. `aic_data` reads NVIDIA's aiconfigurator-core measurements
(docs/kernel-data.md).
"""
