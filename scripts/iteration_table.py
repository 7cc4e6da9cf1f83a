"""The paper's iteration table for any experiment: one model per train_stages (T), each
evaluated with every eval_stages (T) >= it, beside the paper's numbers. ``--help`` (or
emanet/iteration_table.py) says how.

    python scripts/iteration_table.py experiment=voc_r50_ablation     # the paper's setting
"""

from emanet.iteration_table import main

if __name__ == "__main__":
    main()
