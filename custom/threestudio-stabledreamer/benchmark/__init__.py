"""Benchmark StableDreamer against other text-to-3D configs.

Run it as ``python -m threestudio_stabledreamer.benchmark`` (see ``cli``).

Kept out of the extension's ``__init__``: threestudio's launcher loads the extension under
another module name, and the runner's measuring wrapper (``measure_launch.py``) runs the
launcher without importing this package.
"""
