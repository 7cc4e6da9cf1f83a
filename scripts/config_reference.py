"""Print the table of every config key (what it allows, what it does), rendered from the
config schema (emanet/config_schema.py); with --update-docs, write it into
docs/configuration.md between its config-keys markers."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from emanet.config_checks import key_table
from emanet.errors import MissingSectionError
from emanet.io import replace_marked_section

DOCS_PAGE = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("prefixes", nargs="*", default=[""], help="only keys starting with these (e.g. model.ema.)")
    parser.add_argument("--update-docs", action="store_true", help=f"write the whole table into {DOCS_PAGE.name}")
    args = parser.parse_args()
    if args.update_docs:
        try:
            replace_marked_section(DOCS_PAGE, "config-keys", key_table())
        except MissingSectionError as error:
            print(f"error: {error}", file=sys.stderr)
            sys.exit(2)
        print(f"wrote the table of config keys into {DOCS_PAGE}")
    else:
        print(key_table(args.prefixes), end="")


if __name__ == "__main__":
    main()
