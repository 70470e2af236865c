from . import uncond
