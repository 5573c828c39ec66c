"""vigil as users get it: the wheel, and the sdist Beam's --setup_file builds, each installed
(not editable) into a fresh virtualenv and run from a folder outside the checkout."""
from __future__ import annotations

import os
import site
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LAYERS = ("schemas", "models", "pipeline", "jobs")


def _tracked_package_files() -> set[str]:
    """Every file git tracks under the four layers, as its path inside ``vigil/``."""
    out = subprocess.run(["git", "ls-files", *LAYERS], cwd=REPO, check=True, capture_output=True,
                         text=True).stdout.split()
    return {f"vigil/{p}" for p in out}


@pytest.fixture(scope="module")
def dists(tmp_path_factory) -> dict[str, Path]:
    """The wheel (``python -m build``: from its own sdist, so nothing is built in the
    checkout) and the sdist exactly as Beam's stager builds it for --setup_file."""
    from apache_beam.runners.portability.stager import Stager
    out = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(REPO)],
                   check=True, capture_output=True)
    sdist_dir = out / "sdist"
    sdist_dir.mkdir()
    sdist = Stager._build_setup_package(str(REPO / "setup.py"), str(sdist_dir))
    (wheel,) = out.glob("vigil_anomaly-*.whl")
    return {"wheel": wheel, "sdist": Path(sdist)}


def test_the_wheel_and_the_sdist_carry_every_module_and_data_file(dists):
    expected = _tracked_package_files()
    with zipfile.ZipFile(dists["wheel"]) as whl:
        names = whl.namelist()
    assert expected <= set(names), sorted(expected - set(names))
    # Nothing but vigil/ and the metadata goes to site-packages: no generic top-level names.
    top = {n.split("/")[0] for n in names} - {"vigil"}
    assert len(top) == 1 and top.pop().endswith(".dist-info"), names
    with tarfile.open(dists["sdist"]) as sdist:
        root = sdist.getnames()[0].split("/")[0]
        in_sdist = {"vigil/" + n.removeprefix(root + "/") for n in sdist.getnames()}
    assert expected <= in_sdist, sorted(expected - in_sdist)


def _fresh_venv(path: Path) -> Path:
    """A virtualenv that sees this environment's dependencies (no network) but not vigil.

    The dependencies' folder is added by a .pth path line, which does not run the ``.pth``
    files inside it, so this checkout's editable-install hook stays off.
    """
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True)
    py = path / "bin" / "python"
    purelib = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    deps = [p for p in site.getsitepackages() if p.endswith("site-packages")]
    Path(purelib, "dependencies.pth").write_text("\n".join(deps) + "\n")
    return py


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIGIL_"))}


@pytest.mark.parametrize("kind", ["wheel", "sdist"])
def test_installed_vigil_runs_the_demo_with_reports_from_another_folder(dists, tmp_path, kind):
    py = _fresh_venv(tmp_path / "venv")
    install = subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index",
                              "--no-build-isolation", "--ignore-installed", str(dists[kind])],
                             capture_output=True, text=True, env=_clean_env())
    assert install.returncode == 0, install.stderr[-3000:]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    vigil = str(tmp_path / "venv" / "bin" / "vigil")

    def run(*cmd: str) -> subprocess.CompletedProcess:
        return subprocess.run(list(cmd), cwd=elsewhere, capture_output=True, text=True, env=_clean_env(),
                              timeout=900)

    version = run(vigil, "--version")
    assert version.returncode == 0 and version.stdout.strip() == "vigil 0.1.0", version

    probe = run(str(py), "-c", "import sys, vigil.models, vigil.schemas; "
                "assert 'apache_beam' not in sys.modules, 'vigil.models imported Beam'; "
                "print(list(vigil.models.__path__)[0]); print(vigil.models.__version__)")
    assert probe.returncode == 0, probe.stderr[-2000:]
    where, pyversion = probe.stdout.split()
    assert where.startswith(str(tmp_path / "venv")) and pyversion == "0.1.0", probe.stdout
    for bare in LAYERS:
        assert run(str(py), "-c", f"import {bare}").returncode != 0, f"'import {bare}' works"

    demo = run(vigil, "demo", "--kind", "features", "--output", "demo-out")
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
    assert "records:     read 319, scored 319, dead-lettered 0" in demo.stdout, demo.stdout
    run_dir = elsewhere / "demo-out" / "runs" / "demo"
    assert (run_dir / "_SUCCESS").exists()
    assert (run_dir / "report" / "index.html").stat().st_size > 0
    assert (run_dir / "report" / "data_docs" / "index.html").exists()
    version_dir = elsewhere / "demo-out" / "registry" / "demo-features" / "versions" / "0001"
    assert (version_dir / "report.html").exists()
    assert "Traceback" not in demo.stderr, demo.stderr[-3000:]
