from . import background, exporters, geometry, materials, prompt_processors, renderers
