"""``python -m covseg`` (and ``torchrun ... -m covseg train``): the command line."""

from covseg.cli.main import main

if __name__ == "__main__":
    main()
