"""`python -m accumbench ...` (and `torchrun -m accumbench run --distributed ...`): the CLI."""

from accumbench.cli import main

if __name__ == "__main__":
    main()
