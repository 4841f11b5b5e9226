"""What the client checks share: each check runs on its own and its failure is recorded, so one
run reports every failing case, then a summary line and an exit status."""

import os
import traceback

from tritonclient.utils import InferenceServerException


class Checker:
    def __init__(self, title):
        self.title = title
        self.passed = 0
        self.failures = []

    def check(self, name, fn, *args, **kwargs):
        try:
            fn(*args, **kwargs)
        except AssertionError as e:
            self.failures.append((name, "assertion failed: %s" % e))
        except InferenceServerException as e:
            self.failures.append((name, "unexpected InferenceServerException: %s" % e))
        except Exception as e:  # noqa: BLE001 - every failure is reported, never raised
            frame = traceback.extract_tb(e.__traceback__)[-1]
            self.failures.append(
                (
                    name,
                    "unexpected %s: %s (raised at %s:%d)"
                    % (type(e).__name__, e, os.path.basename(frame.filename), frame.lineno),
                )
            )
        else:
            self.passed += 1

    def report(self):
        """Prints the failures and the summary; returns the exit status."""
        for name, message in self.failures:
            print("FAIL %s: %s" % (name, message))
        print("%s: %d passed, %d failed" % (self.title, self.passed, len(self.failures)))
        return 1 if self.failures else 0
