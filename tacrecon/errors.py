"""The one exception type for bad input: the CLI prints it as a single line and exits 2."""


class TacreconError(ValueError):
    """A problem with the user's input (a missing file, an unknown name, a bad value).

    The message must say what was wrong and, where it helps, what was expected.
    """
