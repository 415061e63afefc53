"""A free TCP port for torchrun's rendezvous in the distributed tests."""
import socket


def free_port() -> str:
    """A TCP port nothing listens on now (as a string, for the env)."""
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return str(s.getsockname()[1])
