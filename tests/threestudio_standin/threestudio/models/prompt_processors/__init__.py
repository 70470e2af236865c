from . import base, deepfloyd_prompt_processor, stable_diffusion_prompt_processor
