"""The one exception type for bad input, so the CLI can print it plainly and exit non-zero."""


class NtngError(Exception):
    """A problem the user can fix (config, paths, data, tables); its message says how."""
