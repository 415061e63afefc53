"""The messages a logger emits inside a ``with`` block."""
import contextlib
import logging


class _Collect(logging.Handler):

    def __init__(self, messages):
        super().__init__()
        self.messages = messages

    def emit(self, record):
        self.messages.append(record.getMessage())


@contextlib.contextmanager
def log_messages(logger):
    """``with log_messages(logger) as messages:`` collects the messages
    ``logger`` emits in the block (a list, filled as they come)."""
    messages = []
    handler = _Collect(messages)
    logger.addHandler(handler)
    try:
        yield messages
    finally:
        logger.removeHandler(handler)
