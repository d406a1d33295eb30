"""The compose file and Dockerfiles, checked without Docker (the smoke script runs them for real)."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from conftest import ROOT

COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def dockerfiles() -> list[Path]:
    return [ROOT / service["build"]["dockerfile"] for service in COMPOSE["services"].values() if "build" in service]


def test_compose_services_and_their_contract() -> None:
    services = COMPOSE["services"]
    assert {"trainer", "server"} <= set(services)
    server = services["server"]
    assert server["depends_on"]["trainer"]["condition"] == "service_completed_successfully"
    assert "models:/models:ro" in server["volumes"]
    assert "models:/models" in services["trainer"]["volumes"]
    for port in server["ports"]:
        assert port.startswith("${TLSERVE_BIND:-127.0.0.1}:"), "ports are published on loopback by default"
    assert "models" in COMPOSE["volumes"]
    for name, service in services.items():
        if "build" in service:
            assert service["build"]["args"]["BASE_IMAGE"] == "${BASE_IMAGE:-python:3.11-slim}", name


def test_every_path_named_by_compose_and_dockerfiles_exists() -> None:
    for dockerfile in dockerfiles():
        assert dockerfile.is_file(), dockerfile
        text = dockerfile.read_text()
        assert re.search(r"^ARG BASE_IMAGE=python:3\.11-slim$", text, re.M)
        assert re.search(r"^USER (?!root)\w+$", text, re.M), f"{dockerfile.name} must run as non-root"
        for line in text.splitlines():
            if line.startswith("COPY") and "--from=" not in line:
                for source in line.split()[1:-1]:
                    assert (ROOT / source).exists(), f"{dockerfile.name} copies missing {source}"
            if "requirements.py pyproject.toml" in line:
                extras = line.split("requirements.py pyproject.toml")[1].split(">")[0].split()
                from importlib import util

                spec = util.spec_from_file_location("requirements", ROOT / "docker" / "requirements.py")
                assert spec and spec.loader
                module = util.module_from_spec(spec)
                spec.loader.exec_module(module)
                assert module.requirements(str(ROOT / "pyproject.toml"), extras), extras
    server = (ROOT / "docker" / "server.Dockerfile").read_text()
    assert "HEALTHCHECK" in server and "tlserve\", \"health\"" in server
    installs = [line for line in server.splitlines() if "pip install" in line or "requirements.py" in line]
    assert installs and not any("trainer" in line for line in installs)
    assert "requirements.py pyproject.toml server tracing" in server and "'.[server,tracing]'" in server


def test_dockerignore_keeps_data_and_venvs_out() -> None:
    ignored = (ROOT / ".dockerignore").read_text().split()
    for entry in (".venv", "data", ".git", "**/__pycache__"):
        assert entry in ignored


def test_images_copy_every_package_folder_pyproject_maps() -> None:
    """`pip install .` in the image needs every folder of [tool.setuptools] package-dir."""
    import tomllib

    package_dir = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    for dockerfile in dockerfiles():
        copied = {line.split()[1] for line in dockerfile.read_text().splitlines()
                  if line.startswith("COPY") and "--from=" not in line}
        missing = sorted(set(package_dir.values()) - copied)
        assert not missing, f"{dockerfile.name} does not COPY {missing}"
