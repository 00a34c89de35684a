"""The one exception type for problems a user can fix (bad paths, bad values, corrupt files)."""


class UserError(Exception):
    """A problem with the user's input; the CLI prints its message as one line and exits non-zero."""
