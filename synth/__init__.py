"""TEM-like image simulator with crowd noise: ``synth.generate(preset, seed)``, ``SynthDataset.load(dir)``."""

from synth.config import PRESETS, NoiseConfig, SceneConfig, SimConfig, get_preset
from synth.dataset import ImageRecord, SynthDataset, generate
from synth.noise import CrowdNoise, NoiseRates

__all__ = [
    "PRESETS",
    "CrowdNoise",
    "ImageRecord",
    "NoiseConfig",
    "NoiseRates",
    "SceneConfig",
    "SimConfig",
    "SynthDataset",
    "generate",
    "get_preset",
]
