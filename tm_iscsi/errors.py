"""The front-end's failure: one line that oned shows the user."""


class DriverError(Exception):
    def __init__(self, message):
        super().__init__(" ".join(str(message).split()))
