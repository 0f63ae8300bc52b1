import importlib
import importlib.util
import site
import subprocess
import sys
from pathlib import Path

# Placeholder until the course has its public home (see the README): change it in this one place.
REPO_URL = "https://github.com/clip-pacl/clip-pacl"

if "google.colab" in sys.modules:
    repo = Path("/content") / REPO_URL.rstrip("/").rsplit("/", 1)[-1]
    if not repo.exists():
        subprocess.run(["git", "clone", "--depth", "1", REPO_URL, str(repo)], check=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-r",
                    str(repo / "requirements.txt")], check=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "-e", str(repo)],
                   check=True)
    for folder in site.getsitepackages():    # let this running kernel see the new install
        site.addsitedir(folder)
    importlib.invalidate_caches()
if importlib.util.find_spec("utils") is None:
    raise ModuleNotFoundError(
        "The course package `utils` is not installed for this kernel's Python. In the "
        "repository, run `make setup` and pick .venv's kernel, or run `pip install -e .`; then "
        "restart the kernel.")
