"""Image files decoded whole, by one decoder (PIL, which timm's loaders use): a truncated or damaged file is refused,
never read as what a lenient decoder makes of it (OpenCV's libjpeg fills a cut-off JPEG with grey and only warns)."""
import io
import os
from typing import BinaryIO, Union

from PIL import Image, UnidentifiedImageError

from .errors import UserError
from .files import read_input_file

__all__ = ['open_rgb', 'read_image']


def open_rgb(file: Union[str, os.PathLike, BinaryIO]) -> Image.Image:
    """The RGB pixels of an image file, decoded completely: PIL raises (``OSError: image file is truncated``, a
    ``SyntaxError``, a ``ValueError``...) when it does not decode to the end."""
    with Image.open(file) as image:
        return image.convert('RGB')


def read_image(path: Union[str, os.PathLike], what: str) -> Image.Image:
    """The image file ``path`` the user named (``what`` says how, e.g. ``--image``) decoded completely, or one line
    saying why not: missing, a directory, unreadable or empty (``files.read_input_file``), or not decoding whole."""
    data = read_input_file(path, what)
    try:
        return open_rgb(io.BytesIO(data))
    except UnidentifiedImageError:
        raise UserError(f'{what} {path} is not an image file PIL can read; pass a JPEG, PNG or other image') from None
    except Exception as e:  # noqa: BLE001  (PIL's decoders raise OSError, SyntaxError, ValueError and others)
        raise UserError(f'{what} {path} does not decode completely ({type(e).__name__}: {e}); pass an image that '
                        'does') from None
