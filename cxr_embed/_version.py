__version__ = "0.2.0"
"""The version of cxr_embed (PEP 440), also printed by ``cxr-embed --version``."""
