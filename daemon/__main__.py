"""``python -m daemon``: see daemon.cli."""

from daemon.cli import main

if __name__ == "__main__":
    main()
