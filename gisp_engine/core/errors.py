"""The one exception type that carries a message meant for the user."""


class GispError(Exception):
    """Bad input or environment: the message says what is wrong and what to do.

    The CLI prints it as one line and exits with code 2; the app shows it in the page.
    """

    exit_code = 2
