"""The container image's definitions agree: the Containerfile (registry users) and `make image`
(image/base.sh + image/build.sh) install the same Debian packages and pinned wheels, with the user the
Deployment runs as and the `meshfed` entry point; the pinned lists cover pyproject's dependencies; and
the README's kustomization `images:` override points the Deployment at a registry's image (kubectl
kustomize, when kubectl is installed)."""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CONTAINERFILE = (REPO / "Containerfile").read_text()
BUILD = (REPO / "image" / "build.sh").read_text()
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pinned(path: Path) -> dict[str, str]:
    return {norm(m[0]): m[1] for m in re.findall(r"^([A-Za-z0-9_.-]+)==(\S+) \\$", path.read_text(), re.MULTILINE)}


def test_same_debian_packages() -> None:
    (base,) = re.findall(r"^PACKAGES=(\S+)$", (REPO / "image" / "base.sh").read_text(), re.MULTILINE)
    final_stage = CONTAINERFILE.split("\nFROM ${DEBIAN}\n", 1)[1]
    (install,) = re.findall(r"--no-install-recommends \\\n\s+([^\\\n]+)", final_stage)
    assert set(install.split()) == set(base.split(","))


def test_pinned_wheels_cover_the_dependencies_with_hashes() -> None:
    runtime = pinned(REPO / "image" / "requirements.txt")
    for dep in PYPROJECT["project"]["dependencies"]:
        name = norm(re.split(r"[<>=!~ \[;]", dep, maxsplit=1)[0])
        assert name in runtime, f"{dep} is not pinned in image/requirements.txt: run make image-lock"
    text = (REPO / "image" / "requirements.txt").read_text()
    assert text.count("--hash=sha256:") == len(runtime)
    assert "setuptools" in pinned(REPO / "image" / "build-requirements.txt")
    for path in ("image/requirements.txt", "image/build-requirements.txt"):
        assert f"-r {path}" in CONTAINERFILE and f"-r {path}" in BUILD


def test_user_entry_point_and_version_match_the_deployment() -> None:
    deployment = yaml.safe_load((REPO / "deploy" / "controller" / "deployment.yaml").read_text())
    pod = deployment["spec"]["template"]["spec"]
    uid, gid = pod["securityContext"]["runAsUser"], pod["securityContext"]["runAsGroup"]
    assert f"USER {uid}:{gid}" in CONTAINERFILE
    assert f"UIDGID={uid}" in BUILD and uid == gid
    assert 'ENTRYPOINT ["/opt/meshfed/bin/meshfed"]' in CONTAINERFILE
    assert '--config.entrypoint "$PREFIX/bin/meshfed"' in BUILD and "PREFIX=/opt/meshfed" in BUILD
    assert pod["containers"][0]["command"] == ["meshfed"]  # found on the image's PATH
    version = PYPROJECT["project"]["version"]
    assert f"org.opencontainers.image.version={version}" in CONTAINERFILE
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == f"meshfed:{version}"


def test_build_output_is_ignored_by_git() -> None:
    assert "build/" in (REPO / ".gitignore").read_text().split()


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")
def test_kustomization_images_override_sets_the_deployment_image(tmp_path: Path) -> None:
    """The README's example: a kustomization of one's own over deploy/ with `images:`."""
    readme = (REPO / "README.md").read_text()
    (example,) = re.findall(r"```yaml\n(# my-hub/kustomization.yaml.*?)```", readme, re.DOTALL)
    k = yaml.safe_load(example)
    assert k["resources"] == ["../deploy"]
    shutil.copytree(REPO / "deploy", tmp_path / "deploy")  # beside my-hub/, as the example has it
    (tmp_path / "my-hub").mkdir()
    (tmp_path / "my-hub" / "kustomization.yaml").write_text(example)
    out = subprocess.run(["kubectl", "kustomize", str(tmp_path / "my-hub")], capture_output=True, text=True,
                         check=True).stdout
    (dep,) = [d for d in yaml.safe_load_all(out) if d and d["kind"] == "Deployment"]
    image = dep["spec"]["template"]["spec"]["containers"][0]["image"]
    (override,) = k["images"]
    assert image == f"{override['newName']}:{override['newTag']}"
