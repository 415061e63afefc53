"""``analyze.py gradcam``: Grad-CAM overlays."""
from analyze import run_command


def main(argv=None):
    return run_command('gradcam', argv)


if __name__ == '__main__':
    main()
