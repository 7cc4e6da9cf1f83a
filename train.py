"""Train a segmentation network: `python train.py experiment=voc_emanet512 [key=value ...]`.

With no arguments, trains and evaluates the built-in demo on synthetic data. The same
program as ``emanet-train`` (:func:`emanet.entry_points.train_main`).
"""

from emanet.entry_points import train_main

if __name__ == "__main__":
    train_main()
