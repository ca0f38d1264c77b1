"""``python -m lorakit``: the ``lorakit`` command (how torchrun starts each rank)."""

from lorakit.cli import main

if __name__ == "__main__":
    main()
