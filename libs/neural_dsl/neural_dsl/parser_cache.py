"""`python -m neural_dsl.parser_cache`: write the parser cache beside the grammar.

Run at build time (`make setup`, the image's build; or once after `pip install` when the
package directory is writable) so a new process loads the parser instead of building it.
Without it the library still works: it builds the parser on first use.
"""

from __future__ import annotations

import sys

from .syntax import write_parser_cache


def main() -> int:
    print(write_parser_cache())
    return 0


if __name__ == "__main__":
    sys.exit(main())
