"""``python -m benchmarks.server_capacity``: see the package's docstring (``--help``)."""

from benchmarks.server_capacity import main

if __name__ == "__main__":
    main()
