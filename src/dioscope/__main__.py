"""``python -m dioscope``: the command-line interface (see :mod:`dioscope.cli`)."""

from dioscope.cli import main

if __name__ == "__main__":
    main(prog_name="dioscope")
