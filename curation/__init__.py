"""zcurate: the shared core (schema, Lance store, configs, stage runner, CLI) of the curation platform."""

import os as _os

# Ray 2.60 turns on token authentication once ~/.ray/auth_token exists, and a client must then
# know it before `import ray`. Token mode everywhere (Ray generates the token on first start)
# keeps every process of ours consistent with every local cluster of ours.
_os.environ.setdefault("RAY_AUTH_MODE", "token")
_os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# transformers draws a "Loading weights" bar on stderr for every model it loads, in the middle of
# a command's own progress lines (`curate search --text`): the jobs say what they load themselves
_os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

from curation.compat import install_torchvision_hook as _install_torchvision_hook  # noqa: E402

_install_torchvision_hook()  # a CUDA torchvision next to CPU torch must not break transformers
