"""The one exception type for mistakes of the user (bad config, wrong folder, bad file)."""


class UserError(Exception):
    """Something the user gave is wrong; entry points print it as one line and exit with code 2."""
