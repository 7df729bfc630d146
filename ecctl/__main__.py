"""``python -m ecctl``: the ecctl command line."""

from .cli import main

if __name__ == "__main__":
    main()
