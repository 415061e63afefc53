"""A script of ``tools/`` loaded as a module, so a test calls its ``main``
in process (a fresh module each call: no state shared between tests)."""
import importlib.util
import os.path as osp

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))


def load_tool(rel: str):
    """``rel``: the script's path under ``tools/``, e.g. ``'test.py'`` or
    ``'model_converters/mmpretrain2mmseg.py'``."""
    name = 'tool_' + osp.splitext(rel)[0].replace('/', '_')
    spec = importlib.util.spec_from_file_location(
        name, osp.join(ROOT, 'tools', rel))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
