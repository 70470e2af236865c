"""Prompt processors of the extension. Importing this package registers
``stabledreamer-lab-prompt-processor``."""

from .lab import LabPromptProcessor

__all__ = ["LabPromptProcessor"]
