"""EMANet: Expectation-Maximization Attention Networks for semantic segmentation."""

import os

# albumentations asks PyPI for a newer release at import time; on cluster nodes without
# internet that stalls every process and data-loader worker until the request times out.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

__version__ = "0.1.0"
