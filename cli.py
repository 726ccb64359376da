#!/usr/bin/env python3
"""``python cli.py ...`` behaves exactly like the ``jaxport`` console script."""
from transpiler.cli import main

if __name__ == "__main__":
    main()
