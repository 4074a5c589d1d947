"""The image: hadolint-clean, multi-stage, non-root, and built only from what .dockerignore lets in."""

from __future__ import annotations

import fnmatch
import re

from ccr_gateway import envoy_bootstrap
from tests.deploy.tools import REPO, explain, run, tool

DOCKERFILE = REPO / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_hadolint_finds_nothing() -> None:
    result = run([tool("hadolint"), "--failure-threshold", "info", str(DOCKERFILE)])
    assert result.returncode == 0, explain(result)


def test_a_builder_stage_makes_wheels_and_the_runtime_stage_installs_them() -> None:
    steps = instructions()
    stages = [rest for word, rest in steps if word == "FROM"]
    assert [stage.split()[-1] for stage in stages] == ["builder", "runtime"]
    assert any(word == "RUN" and "pip wheel" in rest for word, rest in steps)
    assert any(word == "RUN" and "from=builder" in rest and "--no-index" in rest for word, rest in steps)
    image = dict(re.findall(r"ARG (\w+)=(\S+)", DOCKERFILE.read_text()))["PYTHON_IMAGE"]
    assert re.fullmatch(r"python:3\.11\.\d+-slim-\w+", image), image


def test_the_image_runs_as_a_fixed_non_root_user_with_ccr_gateway_as_entry_point() -> None:
    steps = instructions()
    assert ("USER", "10001:10001") in steps
    assert steps[-2:] == [("ENTRYPOINT", '["ccr-gateway"]'), ("CMD", '["--help"]')]
    assert ("VOLUME", '["/run/ccr", "/var/lib/ccr", "/tmp"]') in steps


def test_every_copied_path_exists_and_passes_dockerignore() -> None:
    kept = [line[1:].rstrip("/") for line in (REPO / ".dockerignore").read_text().splitlines() if line.startswith("!")]
    for word, rest in instructions():
        if word != "COPY" or rest.startswith("--from"):
            continue
        for source in rest.split()[:-1]:
            source = source.rstrip("/")
            assert (REPO / source).exists(), f"COPY {source}: no such path"
            assert any(source == k or source.startswith(k + "/") or fnmatch.fnmatch(source, k) for k in kept), (
                f"COPY {source}: excluded by .dockerignore"
            )


def test_the_bootstrap_template_lands_where_envoy_bootstrap_reads_it() -> None:
    """The wheel has no envoy/ folder: the Dockerfile puts the template at
    <site-packages>/envoy/bootstrap.yaml, beside the installed ccr_gateway package."""
    relative = envoy_bootstrap.BOOTSTRAP_TEMPLATE.relative_to(REPO)  # envoy/bootstrap.yaml
    site_packages = "/opt/ccr/lib/python3.11/site-packages/"
    assert ("COPY", f"{relative} {site_packages}{relative}") in instructions()
