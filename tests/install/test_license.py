"""The pack ships the full Apache-2.0 text, a NOTICE naming the upstream designs the core follows, and declares
the license in pyproject.toml (the Comfy registry reads it from there)."""
import hashlib
import tomllib
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
# MD5 of the canonical https://www.apache.org/licenses/LICENSE-2.0.txt (202 lines).
APACHE_2_MD5 = "3b83ef96387f14655fc854ddc3c6bd57"


def test_license_is_the_full_apache_2_text():
    text = (REPO_ROOT / "LICENSE").read_bytes()
    assert hashlib.md5(text).hexdigest() == APACHE_2_MD5


def test_notice_names_the_upstream_designs():
    notice = (REPO_ROOT / "NOTICE").read_text(encoding="utf-8")
    for name in ("BAGEL", "ByteDance Seed", "Qwen2.5", "SigLIP", "FLUX", "Black Forest Labs", "Apache License"):
        assert name in notice, name


def test_pyproject_declares_the_license_file():
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == {"file": "LICENSE"}
    assert "License :: OSI Approved :: Apache Software License" in project["classifiers"]
