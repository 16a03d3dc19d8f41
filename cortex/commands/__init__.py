"""The CLI's client commands: status, load, unload, pin, probe, fetch-demo.

Each module is imported only when its command runs, and none of them imports aiohttp, torch or
the servers, so that `cortex --help` and `cortex status` start fast (`bench/cli_startup.py`).
"""
