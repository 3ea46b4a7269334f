"""The error a user of the trainer sees: one line that says what to do."""


class TrainingError(RuntimeError):
  """A problem the user must fix (bad config, busy or unwritable workdir, damaged checkpoint,
  full disk, diverged run); the message is one line."""
