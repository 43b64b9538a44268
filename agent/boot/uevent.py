"""pyroute2's UeventSocket without pyroute2's package import.

`import pyroute2` runs its __init__, which imports every API the library has (NDB with
sqlite3, ssl through its rtnl probe messages): about 115 ms, and libssl in the
initramfs. The uevent socket needs none of it, so the package is entered through a
bare module object and only pyroute2.netlink.uevent and what it imports are executed.
Importing this module is the cost; PID 1 imports it only when it must wait for a device.
"""

from __future__ import annotations

import importlib.util
import sys
import types


def _enter_package_bare(name: str) -> None:
    if name in sys.modules:
        return
    spec = importlib.util.find_spec(name)
    if spec is None or spec.submodule_search_locations is None:
        raise ImportError(f"{name} is not installed", name=name)
    shell = types.ModuleType(name)
    shell.__path__ = list(spec.submodule_search_locations)
    shell.__spec__ = spec
    sys.modules[name] = shell


_enter_package_bare("pyroute2")

from pyroute2.netlink.uevent import UeventSocket  # noqa: E402

__all__ = ["UeventSocket"]
