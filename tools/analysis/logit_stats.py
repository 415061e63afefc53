"""``analyze.py logit-stats``: z_gt, z_max, logit range, error gap."""
from analyze import run_command


def main(argv=None):
    return run_command('logit-stats', argv)


if __name__ == '__main__':
    main()
