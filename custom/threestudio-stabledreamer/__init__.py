"""StableDreamer as a threestudio extension.

threestudio's ``launch.py`` loads this folder by file path; importing it registers every
``stabledreamer-*`` class. The pure-PyTorch core (``.core``) does not need threestudio, so
the registering modules are imported only when threestudio is importable.
"""
import importlib.util

if importlib.util.find_spec("threestudio") is not None:
    from . import exporters, geometry, guidance, prompt_processors, renderers, systems
