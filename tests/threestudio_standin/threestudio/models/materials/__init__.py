from . import base, no_material
