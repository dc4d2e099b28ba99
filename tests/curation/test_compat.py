"""A CUDA torchvision next to CPU torch must not break transformers / sentence-transformers imports."""

import subprocess
import sys

CODE = """
import importlib.util, sys
import curation
from transformers import PreTrainedModel
import sentence_transformers
if importlib.util.find_spec("torchvision"):
    import torchvision, torchvision.transforms
    assert torchvision.__spec__.loader.__class__.__name__ != "_AlreadyLoaded"
    print("torchvision", torchvision.__version__)
print("ok")
"""


def test_hf_imports_survive_installed_torchvision():
    r = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip().endswith("ok")
