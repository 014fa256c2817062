"""Files `herald` writes for the user: whole, or not at all."""

import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from cli.client import CliError


@contextmanager
def replaced_on_success(path: Path) -> Iterator[BinaryIO]:
    """A new file next to `path`, renamed over it once the block ends without an error and
    removed otherwise: `path` holds the old content or the whole new one, never a part."""
    if not path.name or path.is_dir():
        raise CliError(f"cannot write {path}: it is a folder, not a file")
    part = path.with_name(f".{path.name}.{secrets.token_hex(4)}.part")
    try:
        with part.open("xb") as file:
            yield file
        part.replace(path)
    except OSError as error:
        raise CliError(f"cannot write {path}: {error.strerror or error}") from error
    finally:
        part.unlink(missing_ok=True)
