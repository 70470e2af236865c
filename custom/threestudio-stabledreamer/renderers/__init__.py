"""threestudio renderers of the extension."""
from . import gaussian_rasterizer
