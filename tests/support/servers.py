"""Real servers for tests: the lab servers of `dialer.lab` (loopback, free port, temp dir)."""

from dialer.lab import RedisServer, free_port

__all__ = ["RedisServer", "free_port"]
