"""The fuzz tier: hypothesis drives every parser and reader with hostile bytes and shapes.

Property everywhere: a value or the project's typed error (agent.errors, or the module's
own ValueError subclass where it has one), never another exception, within a deadline.
Profiles: `short` (the default, in `make test`) and `long` (`make fuzz`, or
OVERLAY_AGENT_FUZZ=long). No example database is written.
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis.configuration import set_hypothesis_home_dir

# hypothesis keeps caches (unicode tables, constants) even without a database: under the
# project's own ignored cache folder, not a new .hypothesis/ in whatever the cwd is
set_hypothesis_home_dir(str(Path(__file__).resolve().parents[2] / ".cache" / "hypothesis"))

COMMON = {"deadline": timedelta(seconds=10), "database": None, "derandomize": False,
          "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large,
                                    HealthCheck.function_scoped_fixture]}
settings.register_profile("short", max_examples=100, **COMMON)
settings.register_profile("long", max_examples=4000, **COMMON)
settings.load_profile(os.environ.get("OVERLAY_AGENT_FUZZ", "short"))
