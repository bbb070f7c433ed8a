"""The convert-caffe console command (the conversion itself: ``converters.caffe.command``).

This module imports nothing heavy, so that Ctrl-C at any moment after the interpreter starts, the long imports
included, ends in one line and exit code 130.
"""
from timm_sknet.io.errors import run_cli


def _convert() -> int:
    from .command import main  # numpy, protobuf and safetensors: imported once run_cli handles Ctrl-C
    return main()


def main() -> None:
    run_cli('convert-caffe', _convert)


if __name__ == '__main__':
    main()
