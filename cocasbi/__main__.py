"""``python -m cocasbi``: the ``cocasbi`` command line."""

from cocasbi.cli import main

if __name__ == "__main__":
    main()
