"""Run a script with mmpretrain's CIFAR-10 md5 checks switched off.

mmpretrain's ``CIFAR10`` checks the md5 of the real files, which generated
test data (``maxsup_mm.datasets.write_cifar10``) cannot match::

    python tests/helpers/cifar_md5_off.py tools/reproduce.py ARGS...

Everything else runs unchanged (``runpy``, ``__name__ == '__main__'``).
"""
import runpy
import sys


def switch_off_cifar10_md5() -> None:
    """Drop the md5 sums of ``CIFAR10`` (not ``CIFAR100``)."""
    from mmpretrain.datasets import CIFAR10
    CIFAR10.train_list = [[name, None] for name, _ in CIFAR10.train_list]
    CIFAR10.test_list = [[name, None] for name, _ in CIFAR10.test_list]
    CIFAR10.meta = dict(CIFAR10.meta, md5=None)


if __name__ == '__main__':
    switch_off_cifar10_md5()
    script, sys.argv = sys.argv[1], sys.argv[1:]
    runpy.run_path(script, run_name='__main__')
