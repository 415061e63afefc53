"""Nested config dicts as ``{'a.b.c': leaf}``, to compare two configs key by
key."""


def flatten(obj, prefix=''):
    """``{'a.b.c': leaf}`` for nested dicts (lists of dicts are leaves)."""
    if isinstance(obj, dict):
        out = {}
        for key, value in obj.items():
            out.update(flatten(value, f'{prefix}.{key}' if prefix else key))
        return out
    return {prefix: obj}
