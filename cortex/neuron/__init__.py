"""`cortex neuron`: the node daemon (aiohttp front, one engine thread per device)."""
