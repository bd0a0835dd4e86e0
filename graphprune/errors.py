"""Errors users can meet. Each carries the process exit code the CLI returns.

Exit codes (documented in README.md):
  0  success (also: nothing prunable, an unchanged copy is written)
  2  bad command-line usage (click) or invalid option value
  3  input model cannot be read (missing, not ONNX, truncated, bad external data)
  4  output cannot be written
  5  verification failed (pruned model disagrees with the masked-dense oracle)
  6  calibration data does not match the model
"""


class GraphpruneError(Exception):
    exit_code = 1

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class UsageError(GraphpruneError):
    exit_code = 2


class InputError(GraphpruneError):
    exit_code = 3


class OutputError(GraphpruneError):
    exit_code = 4


class VerifyError(GraphpruneError):
    exit_code = 5


class CalibrationError(GraphpruneError):
    exit_code = 6
