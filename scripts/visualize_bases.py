"""The responsibilities Z of a few EMA bases on one image, after the last EM iteration,
drawn as bases.png and bases.pdf. ``--help`` (or emanet/visualize_bases.py) says how.

    python scripts/visualize_bases.py checkpoint=PATH [experiment=...] [--index 0 | --image PATH]
        [--bases 3 17 40] [--count 6] [--output PATH]
"""

from emanet.visualize_bases import main

if __name__ == "__main__":
    main()
