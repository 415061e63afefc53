"""Install ``maxsup_mm``: Max Suppression regularization for OpenMMLab.

Versions live in ``requirements/`` only: ``runtime.txt`` is
``install_requires`` (what the plugin was tested with, so that pip can check
a foreign environment), ``tests.txt`` the ``tests`` extra.  The heavy,
platform-specific pieces (torch wheels, mmcv 2.1.0 compiled with ops) are
installed from the same files by ``tools/setup_env.sh``.

The configs are installed with the package, where OpenMMLab packages keep
theirs (``maxsup_mm/.mim/configs``): a wheel gets a copy of ``configs/``, so
:func:`maxsup_mm.config_path` finds them without a source checkout; an
editable install reads the checkout's ``configs/`` directly.
"""
import os.path as osp
import shutil

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

HERE = osp.dirname(osp.abspath(__file__))


def parse_requirements(name: str) -> list:
    """The requirements listed in ``requirements/<name>`` (one a line;
    comments and blank lines dropped)."""
    with open(osp.join(HERE, 'requirements', name), encoding='utf-8') as f:
        lines = (line.split('#', 1)[0].strip() for line in f)
        return [line for line in lines if line]


class BuildPyWithConfigs(build_py):
    """``build_py`` that also copies ``configs/`` to
    ``maxsup_mm/.mim/configs`` in the build (wheels); not in editable mode,
    where the package reads the checkout's ``configs/``."""

    def run(self):
        super().run()
        if getattr(self, 'editable_mode', False):
            return
        dst = osp.join(self.build_lib, 'maxsup_mm', '.mim', 'configs')
        if osp.isdir(dst):
            shutil.rmtree(dst)
        shutil.copytree(osp.join(HERE, 'configs'), dst,
                        ignore=shutil.ignore_patterns('__pycache__', '*.pyc'))


if __name__ == '__main__':
    setup(
        name='maxsup_mm',
        version='0.1.0',
        description='Max Suppression (MaxSup) regularization for mmpretrain '
        'and mmsegmentation',
        long_description=open(osp.join(HERE, 'README.md'),
                              encoding='utf-8').read(),
        long_description_content_type='text/markdown',
        packages=find_packages(include=('maxsup_mm', 'maxsup_mm.*')),
        # the fused kernel's sources: an installed copy can build it
        # (maxsup_mm/ops/build.py)
        package_data={'maxsup_mm.ops': ['csrc/*.cpp', 'csrc/*.inc']},
        cmdclass={'build_py': BuildPyWithConfigs},
        python_requires='>=3.9',
        install_requires=parse_requirements('runtime.txt'),
        extras_require={'tests': parse_requirements('tests.txt')},
        license='Apache-2.0',
        zip_safe=False,
    )
