"""Table 1's complexity columns: FLOPs, memory and parameters at 513x513, beside the paper's.

    python scripts/complexity.py [--json] [--size 513] [--no-memory]

How each column is counted: emanet.benchmarks.complexity.
"""

from __future__ import annotations

import argparse
import json

from emanet.benchmarks.complexity import MEMORY_NOTE, PAPER_SIZE, format_rows, json_rows, measure


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="print a JSON list of rows")
    parser.add_argument("--size", type=int, default=PAPER_SIZE, help="input height and width")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory measurement")
    args = parser.parse_args()
    rows = measure(args.size, with_memory=not args.no_memory)
    if args.json:
        print(json.dumps(json_rows(rows)))
    else:
        print(format_rows(rows))
        if not args.no_memory:
            print(f"\n{MEMORY_NOTE}")


if __name__ == "__main__":
    main()
