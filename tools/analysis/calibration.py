"""``analyze.py calibration``: top-1, ECE, reliability diagrams."""
from analyze import run_command


def main(argv=None):
    return run_command('calibration', argv)


if __name__ == '__main__':
    main()
