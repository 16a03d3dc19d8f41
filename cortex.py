"""Entry shim for zipapp and PyInstaller builds: `python cortex.py ...` is `cortex ...`."""

from cortex.cli import main

if __name__ == "__main__":
    main()
