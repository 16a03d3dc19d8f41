"""`cortex serve`: the gateway in front of a fleet of neurons (DESIGN.md section 5).

Never imports torch, numpy, tokenizers or jinja2: it runs on hosts without them.
"""
