"""Build (once) and locate the compiled CPU kernel of the fused MaxSup loss.

``python maxsup_mm/ops/build.py`` compiles ``csrc/maxsup_cpu.cpp`` with
:func:`torch.utils.cpp_extension.load` and keeps the shared library in
``maxsup_mm/ops/_lib/`` (git-ignored; ``MAXSUP_MM_KERNEL_DIR`` overrides it)
under a name that hashes the source, the torch and Python versions and the
flags.  ``tools/setup_env.sh`` runs it; when it is skipped or fails, the loss
falls back to its pure-PyTorch implementation.  A library whose hash does
not match the current source is never loaded, so an edited kernel cannot go
stale silently: run the command again.

Nothing here imports torch until a build is really needed, so the check
``is the kernel already built?`` costs milliseconds.
"""
import argparse
import hashlib
import os
import os.path as osp
import platform
import shutil
import sys
import tempfile
import time

HERE = osp.dirname(osp.abspath(__file__))
SOURCE = osp.join(HERE, 'csrc', 'maxsup_cpu.cpp')
INCLUDES = [osp.join(HERE, 'csrc', 'maxsup_kernels.inc')]
CFLAGS = ['-O3', '-fopenmp', '-fno-math-errno', '-Wno-psabi']
LDFLAGS = ['-fopenmp']
_NAME = 'maxsup_cpu'


def lib_dir() -> str:
    """Folder that holds the built kernels."""
    return os.environ.get('MAXSUP_MM_KERNEL_DIR', osp.join(HERE, '_lib'))


def _torch_version() -> str:
    from importlib.metadata import version
    return version('torch')


def kernel_key() -> str:
    """Hash of everything the binary depends on."""
    h = hashlib.sha256()
    for path in [SOURCE] + INCLUDES:
        with open(path, 'rb') as f:
            h.update(f.read())
    h.update(' '.join(CFLAGS + LDFLAGS).encode())
    h.update(_torch_version().encode())
    h.update(f'{sys.version_info[0]}.{sys.version_info[1]}'.encode())
    h.update(platform.machine().encode())
    return h.hexdigest()[:16]


def kernel_path() -> str:
    """Where the kernel for the current source and torch lives (maybe absent)."""
    return osp.join(lib_dir(), f'{_NAME}_{kernel_key()}.so')


def build(verbose: bool = False, force: bool = False) -> str:
    """Compile the CPU kernel unless it is built already; return its path.

    Args:
        verbose (bool): show the compiler's commands and output.
        force (bool): rebuild even if a library for this source exists.

    Raises:
        RuntimeError: if the compiler fails.
    """
    target = kernel_path()
    if osp.exists(target) and not force:
        return target
    # ninja from this interpreter's environment (pip's ninja), if not on PATH
    bindir = osp.dirname(sys.executable)
    if bindir not in os.environ.get('PATH', '').split(os.pathsep):
        os.environ['PATH'] = bindir + os.pathsep + os.environ.get('PATH', '')
    from torch.utils.cpp_extension import load
    os.makedirs(lib_dir(), exist_ok=True)
    name = osp.splitext(osp.basename(target))[0]
    start = time.time()
    with tempfile.TemporaryDirectory(prefix='maxsup_build_') as tmp:
        load(name=name, sources=[SOURCE], extra_cflags=CFLAGS,
             extra_ldflags=LDFLAGS, build_directory=tmp,
             is_python_module=False, verbose=verbose, with_cuda=False)
        # never through a fixed temporary name (a planted symlink there
        # would be followed): the one atomic-write helper
        from maxsup_mm.fileio import atomic_write
        with open(osp.join(tmp, f'{name}.so'), 'rb') as src, \
                atomic_write(target, 'wb') as dst:
            shutil.copyfileobj(src, dst)
    # drop libraries built from older sources
    for old in os.listdir(lib_dir()):
        if old.startswith(_NAME + '_') and osp.join(lib_dir(), old) != target:
            try:
                os.remove(osp.join(lib_dir(), old))
            except OSError:
                pass
    print(f'[maxsup_mm] built the fused MaxSup CPU kernel in '
          f'{time.time() - start:.0f} s: {target}')
    return target


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--verbose', action='store_true')
    parser.add_argument('--force', action='store_true',
                        help='rebuild even if the kernel exists')
    args = parser.parse_args(argv)
    path = kernel_path()
    if osp.exists(path) and not args.force:
        print(f'[maxsup_mm] fused MaxSup CPU kernel up to date: {path}')
        return 0
    build(verbose=args.verbose, force=args.force)
    return 0


if __name__ == '__main__':
    sys.exit(main())
