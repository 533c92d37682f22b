"""``python -m addrop_cli`` is the ``addrop`` command."""

from addrop_cli.cli import main

if __name__ == "__main__":
    main()
