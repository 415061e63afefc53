"""Install ``maxsup_mm``: Max Suppression regularization for OpenMMLab.

The heavy, platform-specific pieces (torch CUDA wheels, mmcv 2.1.0 compiled
with ops) are installed by ``tools/setup_env.sh``; ``install_requires`` pins
what the plugin was tested with so that pip can check a foreign environment.
"""
import os.path as osp

from setuptools import find_packages, setup

HERE = osp.dirname(osp.abspath(__file__))

INSTALL_REQUIRES = [
    'torch==2.14.1',
    'torchvision==0.29.1',
    'mmengine==0.10.7',
    'mmcv==2.1.0',
    'mmpretrain==1.2.0',
    'mmsegmentation==1.2.2',
    'setuptools>=77,<81',
    # mmsegmentation 1.2.2 imports these at import time
    'ftfy',
    'regex',
    'prettytable',
    'scipy',
    # mmpretrain 1.2.0 run-time needs (it is installed with --no-deps)
    'einops',
    'importlib-metadata',
    'mat4py',
    'modelindex',
    'rich',
    # analysis toolkit and the quickstart
    'scikit-learn',
    'matplotlib',
    'grad-cam',
]

setup(
    name='maxsup_mm',
    version='0.1.0',
    description='Max Suppression (MaxSup) regularization for mmpretrain and '
    'mmsegmentation',
    long_description=open(osp.join(HERE, 'README.md'), encoding='utf-8').read(),
    long_description_content_type='text/markdown',
    packages=find_packages(exclude=('tests', 'configs', 'tools')),
    python_requires='>=3.9',
    install_requires=INSTALL_REQUIRES,
    extras_require={'tests': ['pytest', 'timm']},
    license='Apache-2.0',
)
