"""The one exception type for bad input. The CLI prints its message and exits 2."""


class MxportError(ValueError):
    """Bad input: a file, tensor, option or config value that mxport cannot use.

    The message must name the thing (path, tensor name, option) and say what was expected and what was found.
    """
