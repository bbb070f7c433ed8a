"""The console scripts' entry points (``[project.scripts]``): ``timm-sknet``, ``convert-caffe`` and
``convert-pytorchinsight`` start here.

A top-level module, shipped beside the packages: the script generated at install imports this one small file and
calls a function that runs everything else, the packages' own imports included, under a Ctrl-C handler. Ctrl-C
is then one line and exit 130 from the script's first statement on (``timm_sknet.io.errors.run_cli`` takes over
once its module is imported). Before that, CPython is still starting: a SIGINT before it installs its handler ends
the process by the signal, silently, and one while ``site`` runs (the ``.pth`` files) is CPython's own "Fatal Python
error", exit 1. Nothing of the command has run in either case. DOCS-words.md gives the measured windows.
"""
import sys


def _run(prog: str, module: str) -> None:
    try:
        if isinstance(getattr(sys, 'last_value', None), KeyboardInterrupt):
            # CPython caught a Ctrl-C while checking whether the script's path is an import path entry, printed it
            # ("Failed checking if argv[0] is an import path entry") and went on to run the script: it ends here
            raise KeyboardInterrupt
        import importlib
        importlib.import_module(module).main()
    except KeyboardInterrupt:  # while the command's packages were imported: run_cli was not running yet
        from timm_sknet.io.errors import INTERRUPTED
        print(f'{prog}: error: {INTERRUPTED}', file=sys.stderr)
        sys.exit(130)


def timm_sknet() -> None:
    _run('timm-sknet', 'timm_sknet.cli')


def convert_caffe() -> None:
    _run('convert-caffe', 'converters.caffe.cli')


def convert_pytorchinsight() -> None:
    _run('convert-pytorchinsight', 'converters.pytorchinsight.cli')
