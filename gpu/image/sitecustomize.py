"""Makes a CPU venv look like the GPU machines' image for the first-light rehearsal.

`make gpu-rehearsal` puts this folder on PYTHONPATH, so Python imports this module at
start-up: the packages the GPU image lacks (symusic, muspy, music21) then fail to import
as they would there, unless they come from the carried wheels in /tmp/stretto-site.
"""

import importlib.abc
import importlib.machinery
import sys

ABSENT_ON_THE_GPU_IMAGE = ("symusic", "muspy", "music21")
CARRIED = "/tmp/stretto-site"


class _AsOnTheGpuImage(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] not in ABSENT_ON_THE_GPU_IMAGE:
            return None
        carried = importlib.machinery.PathFinder.find_spec(name, path or [CARRIED])
        if carried is not None:
            return carried
        raise ModuleNotFoundError(f"No module named {name!r} (absent on the GPU image)", name=name)


sys.meta_path.insert(0, _AsOnTheGpuImage())
