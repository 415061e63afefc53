"""``analyze.py compare``: every analysis, several checkpoints."""
from analyze import run_command


def main(argv=None):
    return run_command('compare', argv)


if __name__ == '__main__':
    main()
