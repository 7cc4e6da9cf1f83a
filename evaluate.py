"""Evaluate a checkpoint: `python evaluate.py checkpoint=PATH [experiment=...] [eval=ss|ms_flip]`.

The same program as ``emanet-evaluate`` (:func:`emanet.entry_points.evaluate_main`).
"""

from emanet.entry_points import evaluate_main

if __name__ == "__main__":
    evaluate_main()
