"""`python -m training ...` (the torchrun entry point) is `twin train ...`."""

import sys

from twin.cli import main

if __name__ == "__main__":
    main(["train", *sys.argv[1:]])
