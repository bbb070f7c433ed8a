"""The convert-caffe console command: the conversion itself is ``converters.caffe.command``, imported once Ctrl-C is handled."""
from timm_sknet.io.errors import run_command


def main() -> None:
    run_command('convert-caffe', 'converters.caffe.command')


if __name__ == '__main__':
    main()
