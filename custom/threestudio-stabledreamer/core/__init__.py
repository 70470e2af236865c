"""Pure-PyTorch core of the extension: maths, Gaussian operations and rasterization.

Nothing under ``core`` imports threestudio, so it can be used, tested and benchmarked on
its own. The threestudio-facing classes are thin wrappers over it.
"""
