import importlib
import importlib.util
import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

# The course's repository. Using a fork or your own copy? Set its URL here: the only place.
REPO_URL = "https://github.com/clip-pacl/clip-pacl"
DRIVE_FOLDER = Path("/content/drive/MyDrive")   # where a copy kept in Google Drive is looked for

if "google.colab" in sys.modules:
    name = REPO_URL.rstrip("/").rsplit("/", 1)[-1].removesuffix(".git")
    repo = Path.cwd() / name                     # Colab starts every notebook in /content
    uploaded = sorted(Path.cwd().glob(f"{name}*.zip"))   # GitHub's "Download ZIP": NAME-main.zip
    if not repo.exists() and uploaded:
        unzipped = Path.cwd() / f".{name}_unzipped"
        with zipfile.ZipFile(uploaded[-1]) as archive:
            archive.extractall(unzipped)
        top = min((p.parent for p in unzipped.rglob("requirements.txt")), key=lambda p: len(p.parts))
        top.rename(repo)
        shutil.rmtree(unzipped)
    elif not repo.exists() and (DRIVE_FOLDER / name / "requirements.txt").is_file():
        repo = DRIVE_FOLDER / name
    elif not repo.exists():
        clone = subprocess.run(["git", "clone", "--depth", "1", REPO_URL, str(repo)],
                               capture_output=True, text=True)
        if clone.returncode != 0:
            said = (clone.stderr.strip().splitlines() or ["no message"])[-1]
            raise RuntimeError(
                f"Could not download the course from {REPO_URL} (git: {said}). Do one of these, "
                "then run this cell again:\n"
                "1. Using a fork or a copy? Set REPO_URL at the top of this cell to its URL.\n"
                f"2. Upload the course as a zip: on its GitHub page, Code > Download ZIP, then drag "
                f"the {name}-main.zip file into Colab's Files panel (it lands in {Path.cwd()}).\n"
                f"3. Keep a copy of the course in Google Drive as MyDrive/{name}, then mount Drive: "
                "from google.colab import drive; drive.mount('/content/drive').")
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
