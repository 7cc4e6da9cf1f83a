"""Prepare a benchmark from its original downloads: ``emanet-prepare-dataset`` in a checkout.

    python scripts/prepare_dataset.py voc_aug [--voc DIR] [--sbd DIR] [--workers N]

``--help`` lists the benchmarks and options (:mod:`emanet.prepare_dataset`).
"""

from emanet.prepare_dataset import main

if __name__ == "__main__":
    main()
