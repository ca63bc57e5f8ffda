"""Errors a user can act on. The CLI prints them without a traceback."""


class TunesmithError(Exception):
    """A problem with the user's input or environment, with a message that says what to do."""


class DataError(TunesmithError):
    """The data file has errors; ``report`` holds the full data check."""

    def __init__(self, message: str, report=None):
        super().__init__(message)
        self.report = report


class ExportParityError(TunesmithError):
    """An export that does not answer like the model it came from; ``reports`` holds every parity check made."""

    def __init__(self, message: str, reports: list | None = None):
        super().__init__(message)
        self.reports = reports or []
