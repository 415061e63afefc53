"""``analyze.py feature-projection``: template-plane projection."""
from analyze import run_command


def main(argv=None):
    return run_command('feature-projection', argv)


if __name__ == '__main__':
    main()
