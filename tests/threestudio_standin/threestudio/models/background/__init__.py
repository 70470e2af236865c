from . import base, solid_color_background
