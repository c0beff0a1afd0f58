"""`python -m mest_compile`: the command line, as launchers such as `torchrun -m mest_compile train` run it."""

from mest_compile.cli import main

if __name__ == "__main__":
    main()
