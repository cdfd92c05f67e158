"""The remote-code core: the math, ``HFDDPMScheduler`` and the pipelines, which every saved model carries.

Modules here sit flat and import each other only as ``from .module import name``, because diffusers copies
a saved component's sibling files by those lines alone. They import nothing beyond torch, numpy, PIL,
diffusers (with huggingface_hub and safetensors) and each other; ``tests/architecture/test_layout.py`` checks both.
"""
