"""`python -m lensjax.data check PATH`: see `lensjax.data.check`."""

import sys

from lensjax import cli
from lensjax.data import check

if __name__ == "__main__":
  if len(sys.argv) < 2 or sys.argv[1] != "check":
    print(check.USAGE)
    sys.exit(2)
  sys.exit(cli.command(check.main)(sys.argv[2:]))
