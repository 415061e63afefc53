"""``analyze.py extract-features``: features, logits, labels (.npz)."""
from analyze import run_command


def main(argv=None):
    return run_command('extract-features', argv)


if __name__ == '__main__':
    main()
