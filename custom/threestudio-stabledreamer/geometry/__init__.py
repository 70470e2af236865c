"""threestudio geometries of the extension; importing registers them."""
from . import gaussian  # noqa: F401
