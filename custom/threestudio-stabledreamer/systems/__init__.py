"""threestudio systems of the extension: ``stabledreamer-system``."""
from . import stabledreamer
