"""``analyze.py class-separation``: d_within, d_total, R^2."""
from analyze import run_command


def main(argv=None):
    return run_command('class-separation', argv)


if __name__ == '__main__':
    main()
