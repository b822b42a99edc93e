"""The container image (Dockerfile): built, started, and answering as a non-root user.

Needs a Docker engine (``docker info`` answers; ``DOCKER_HOST`` is honoured) and a base
image: ``MOVEMENT_CDS_DOCKER_BASE`` names one, else ``python:3.11-slim-bookworm`` is used if it
is present or can be pulled. Where no registry is reachable, ``tools/debian-base-image.sh``
makes a base image from Debian's packages. Skipped, saying which is missing, otherwise (CI
has no Docker engine). The build passes ``PIP_CERT`` = the base image's own certificate
bundle, so that an HTTPS-inspecting proxy whose certificate is in that bundle works."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.service.conftest import free_port
from tests.service.test_hooks_service import call

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
DEFAULT_BASE = "python:3.11-slim-bookworm"


def docker(*args: str, timeout: float = 60, check: bool = True
           ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], capture_output=True, text=True,
                          timeout=timeout, check=check)


def _base_image() -> str:
    if shutil.which("docker") is None:
        pytest.skip("no docker command")
    try:
        info = docker("info", "--format", "{{.ServerVersion}}", timeout=20, check=False)
    except subprocess.TimeoutExpired:
        pytest.skip("docker info did not answer")
    if info.returncode != 0:
        pytest.skip(f"no Docker engine answers: {info.stderr.strip()[:200]}")
    base = os.environ.get("MOVEMENT_CDS_DOCKER_BASE", DEFAULT_BASE)
    if docker("image", "inspect", base, check=False).returncode == 0:
        return base
    if docker("pull", base, timeout=600, check=False).returncode != 0:
        pytest.skip(f"base image {base} is not present and cannot be pulled; make one with "
                    "tools/debian-base-image.sh and set MOVEMENT_CDS_DOCKER_BASE")
    return base


@pytest.fixture(scope="module")
def image() -> Iterator[str]:
    base = _base_image()
    tag = f"movement-cds-test:{uuid.uuid4().hex[:12]}"
    build = docker("build", "--network", "host", "--build-arg", f"BASE_IMAGE={base}",
                   "--build-arg", "PIP_CERT=/etc/ssl/certs/ca-certificates.crt",
                   "-t", tag, str(ROOT), timeout=1800, check=False)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    try:
        yield tag
    finally:
        docker("rmi", "-f", tag, check=False)


def test_the_image_starts_answers_and_is_healthy(image: str, tmp_path: Path) -> None:
    config_dir = tmp_path / "etc"
    config_dir.mkdir(mode=0o755)
    config_dir.chmod(0o755)  # readable by the image's user, not root
    port = free_port()
    (config_dir / "service.toml").write_text("\n".join([
        "[service]", f'base_url = "http://127.0.0.1:{port}"',
        'database = "sqlite:////var/lib/movement-cds/feedback.db"',
        "", "[auth]", "required = false", ""]))
    (config_dir / "service.toml").chmod(0o644)
    name = f"movement-cds-test-{uuid.uuid4().hex[:8]}"
    docker("run", "-d", "--name", name, "-p", f"127.0.0.1:{port}:8080",
           "-v", f"{config_dir}:/etc/movement-cds:ro", image,
           "--config", "/etc/movement-cds/service.toml", "--host", "0.0.0.0",
           "--port", "8080", "--insecure-no-auth")
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, docker("logs", name, check=False).stderr
            time.sleep(0.5)
        ready = httpx.get(url + "/readyz", timeout=10)
        assert ready.status_code == 200, ready.text
        assert ready.json()["checks"]["database"] == "ok"  # written as uid 10001
        r = httpx.post(url + "/cds-services/movement-cds-patient-view", json=call(),
                       timeout=30)
        assert r.status_code == 200 and r.json()["cards"], r.text
        assert docker("exec", name, "id", "-u").stdout.strip() == "10001"
        # the image runs the modules setup.py compiles as extensions (its build context
        # holds setup.py and mypyc.ini: .dockerignore)
        where = docker("exec", name, "python3", "-c", "import fhir_adapters._inbound as m; "
                       "print(m.__file__)").stdout.strip()
        assert where.endswith(".so"), where
        inspect = json.loads(docker("inspect", name).stdout)[0]
        assert inspect["Config"]["User"] == "10001:10001"
        assert inspect["Config"]["Entrypoint"] == ["movement-cds", "serve"]
        deadline = time.monotonic() + 90  # the image's HEALTHCHECK: every 15 s
        while inspect["State"]["Health"]["Status"] != "healthy":
            assert time.monotonic() < deadline, inspect["State"]["Health"]
            time.sleep(2)
            inspect = json.loads(docker("inspect", name).stdout)[0]
    finally:
        docker("rm", "-f", name, check=False)
