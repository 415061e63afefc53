"""torchrun on CPU for the distributed tests: a free rendezvous port and a
2-rank ``tools/dist_train.sh`` run."""
import os
import os.path as osp
import socket
import subprocess
import sys

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))


def free_port() -> str:
    """A TCP port nothing listens on now (as a string, for the env)."""
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return str(s.getsockname()[1])


def dist_train(cfg: str, work: str, nprocs: int = 2,
               pythonpath: str = None) -> subprocess.CompletedProcess:
    """``bash tools/dist_train.sh CFG NPROCS --work-dir WORK`` (gloo, one
    thread per rank, a free port); ``pythonpath`` for the config's
    ``custom_imports`` of test helpers."""
    env = dict(os.environ, OMP_NUM_THREADS='1', PORT=free_port(),
               PYTHON=sys.executable)
    if pythonpath:
        env['PYTHONPATH'] = pythonpath
    return subprocess.run(['bash', 'tools/dist_train.sh', cfg, str(nprocs),
                           '--work-dir', work], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
