"""setup.py builds the sdist Dataflow workers install, and it carries every package."""
from __future__ import annotations

import site
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_sdist_installs_in_a_fresh_virtualenv_and_imports(tmp_path):
    # What --setup_file does: `python setup.py sdist` in the project root.
    subprocess.run([sys.executable, "setup.py", "-q", "sdist", "--dist-dir", str(tmp_path / "dist")],
                   cwd=REPO, check=True, capture_output=True)
    (sdist,) = (tmp_path / "dist").glob("vigil_anomaly-*.tar.gz")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    # Dependencies come from this environment (no network); vigil itself only from the sdist.
    purelib = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    deps = [p for p in site.getsitepackages() if p.endswith("site-packages")]
    Path(purelib, "deps.pth").write_text("\n".join(deps) + "\n")
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    str(sdist)], check=True, capture_output=True)
    code = ("import schemas.tables, models.registry, pipeline.run, jobs.cli, jobs.train, jobs.demo, "
            "pipeline.anomaly; import jobs, sys; assert 'site-packages' in jobs.__file__, jobs.__file__; "
            "print('ok')")
    out = subprocess.run([str(py), "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-2000:]
    assert (venv / "bin" / "vigil").exists()
