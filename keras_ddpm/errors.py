"""Errors as the one sentence a user sees (the CLI's `Error:` line, the app's message)."""


def describe_error(error):
    """An exception as one line: an `OSError` as "No space left on device: PATH", others their
    first line (or the exception's type when it has no message)."""
    if isinstance(error, OSError) and error.strerror:
        paths = [str(p) for p in (error.filename, error.filename2) if p is not None]
        return error.strerror + (f": {' -> '.join(paths)}" if paths else "")
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
