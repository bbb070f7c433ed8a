"""The convert-pytorchinsight console command: the conversion itself is ``converters.pytorchinsight.command``, imported once Ctrl-C is handled."""
from timm_sknet.io.errors import run_command


def main() -> None:
    run_command('convert-pytorchinsight', 'converters.pytorchinsight.command')


if __name__ == '__main__':
    main()
