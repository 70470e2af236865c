"""threestudio exporters of the extension: ``stabledreamer-gaussian-exporter``."""
from . import gaussian_exporter
