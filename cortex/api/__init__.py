"""Pure API data and conversion: no torch, no aiohttp."""
