"""Package-level helpers: the registries a config needs, and our configs.

:func:`register_all` sets up the OpenMMLab registries for a config (what
``tools/train.py``, ``tools/test.py`` and the analysis toolkit do before
building anything); :func:`config_path` is the one place that knows where the
configs of this project are, in a source checkout and in an installed wheel.
"""
import os.path as osp

from mmengine.config import Config

__all__ = ['register_all', 'config_root', 'config_path']

#: this package's folder (``.../maxsup_mm``)
PACKAGE_DIR = osp.dirname(osp.abspath(__file__))

#: where the configs may be, in order: the copy installed with the package
#: (``setup.py`` puts ``configs/`` there in wheels, as OpenMMLab packages
#: do) and the ``configs/`` of the source checkout the package lives in
#: (editable installs, a clone on ``sys.path``)
CONFIG_ROOTS = (osp.join(PACKAGE_DIR, '.mim', 'configs'),
                osp.join(osp.dirname(PACKAGE_DIR), 'configs'))


def register_all(cfg: Config) -> None:
    """Register our modules and the upstream ones of the config's scope.

    Our losses, heads, backbones and hooks are registered by importing the
    ``maxsup_mm`` package, which this module belongs to; the upstream
    modules of ``default_scope`` (``mmpretrain``, or ``mmseg``) are
    registered here, and that scope becomes the default one.
    """
    scope = cfg.get('default_scope', 'mmpretrain')
    if scope == 'mmseg':
        from mmseg.utils import register_all_modules
        register_all_modules(init_default_scope=True)
    else:
        from mmpretrain.utils import register_all_modules
        register_all_modules(init_default_scope=True)


def config_root() -> str:
    """The folder that holds this project's configs.

    Raises:
        FileNotFoundError: neither an installed copy nor a source checkout.
    """
    for root in CONFIG_ROOTS:
        if osp.isdir(root):
            return root
    raise FileNotFoundError(
        'maxsup_mm: no configs found, neither installed with the package '
        f'({CONFIG_ROOTS[0]}) nor in a source checkout ({CONFIG_ROOTS[1]})')


def config_path(name: str) -> str:
    """The file of a config of this project (or a config given as a path).

    Args:
        name (str): a config of ours, with or without the leading
            ``configs/`` (``'released/deit-small_official_in1k.py'``,
            ``'configs/quickstart/x.py'``); a file that exists (returned as
            given, so a user's own config wins); or an upstream
            ``scope::path`` (returned as given, mmengine resolves it).

    Returns:
        str: a path to read with ``Config.fromfile`` (or the ``scope::path``).

    Raises:
        FileNotFoundError: the config is none of these.
    """
    if '::' in name or osp.isfile(name):
        return name
    rel = osp.normpath(name)
    if rel.startswith('configs' + osp.sep):
        rel = rel[len('configs' + osp.sep):]
    root = config_root()
    path = osp.join(root, rel)
    if (not osp.isabs(rel) and rel.split(osp.sep)[0] != osp.pardir
            and osp.isfile(path)):
        return path
    raise FileNotFoundError(f'config not found: {name} (not a file, and not '
                            f'one of the configs in {root})')
