"""The one exception type every user-caused error is an instance of."""


class BnncError(Exception):
    """A user error (bad model, bad input, bad artifact) with a one-line message.

    The CLI prints it as ``error: <message>`` and exits with code 2.
    """

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))
