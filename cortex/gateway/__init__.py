"""`cortex serve`: the gateway in front of a fleet of neurons (README: "Using the API").

Never imports torch, numpy, tokenizers or jinja2: it runs on hosts without them.
"""
