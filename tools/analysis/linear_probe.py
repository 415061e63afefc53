"""``analyze.py linear-probe``: linear probe on frozen features."""
from analyze import run_command


def main(argv=None):
    return run_command('linear-probe', argv)


if __name__ == '__main__':
    main()
