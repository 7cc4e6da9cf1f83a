"""EMANet: Expectation-Maximization Attention Networks for semantic segmentation."""

import os

# albumentations asks PyPI for a newer release at import time; on cluster nodes without
# internet that stalls every process and data-loader worker until the request times out.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

__version__ = "0.1.0"
__all__ = ["Segmenter", "__version__"]


def __getattr__(name: str):
    # ``from emanet import Segmenter`` without importing torch and the engine for every
    # ``import emanet.<module>`` (the configs' schema plugin, the data converters' workers).
    if name == "Segmenter":
        from emanet.engine.segmenter import Segmenter

        return Segmenter
    raise AttributeError(f"module 'emanet' has no attribute {name!r}")
