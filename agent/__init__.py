"""The sidecar agent: one SQLite writer serving many trainer processes over Unix or TCP sockets."""

from .server import Agent

__all__ = ["Agent"]
