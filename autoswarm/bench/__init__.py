"""Benchmarks, one module per ``autoswarm bench`` command, and what they share.

search.py (simulated search runs: simulate.py, objectives.py, report.py) · systems.py
(real processes, busy fraction and dispatch overhead) · real.py (strategies on a real
template) · rule.py (the keep rule alone) · options.py (option checks, markdown blocks).
"""
