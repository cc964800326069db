"""Runnable examples of the collect endpoint in web frameworks (see examples/README.md)."""
