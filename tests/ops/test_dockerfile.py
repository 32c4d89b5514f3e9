"""The Dockerfile (no Docker engine here to build it): what it copies exists, the runtime is
pinned and unprivileged, and it runs the command and ports the manifests expect."""

from __future__ import annotations

import re
import tomllib

from tests.ops.tools import K8S, ROOT, documents, render


def test_the_image_builds_from_what_the_repository_holds_and_runs_unprivileged() -> None:
    text = (ROOT / "Dockerfile").read_text()
    sources = [
        part
        for line in re.findall(r"^COPY (?!--from)(.+)$", text, re.MULTILINE)
        for part in line.split()[:-1]
    ]
    assert sources
    for source in sources:
        assert (ROOT / source).exists(), f"Dockerfile copies {source}, which is missing"
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    for package in packages["packages"]["find"]["include"]:
        assert package.rstrip("*") in sources, f"the image lacks the {package} package"
    assert "-c constraints.txt" in text
    bases = re.findall(r"^FROM (\S+)", text, re.MULTILINE)
    assert all(":" in base and not base.endswith(":latest") for base in bases), bases
    user = re.findall(r"^USER (\S+)", text, re.MULTILINE)
    assert user, "the image runs as root"
    assert not user[-1].startswith(("0", "root")), user
    assert re.search(r'^ENTRYPOINT \["callmesh"\]', text, re.MULTILINE)  # exec form: SIGTERM
    exposed = {int(port) for port in re.findall(r"^EXPOSE (.+)$", text, re.MULTILINE)[0].split()}
    settings = tomllib.loads((K8S / "base" / "node.toml").read_text())
    assert exposed == {settings["http_port"], settings["grpc_port"]}


def test_the_image_carries_the_prompts_where_the_node_looks_for_them() -> None:
    from node.prompts import shipped_prompts_dir

    text = (ROOT / "Dockerfile").read_text()
    copied = dict(re.findall(r"^COPY (prompts|hooks) (\S+)$", text, re.MULTILINE))
    assert set(copied) == {"prompts", "hooks"}, "the image lacks the prompts or the sample hooks"
    base = re.findall(r"^FROM (python:(\d+\.\d+)\S*)$", text, re.MULTILINE)[-1][1]
    site_packages = f"/opt/callmesh/lib/python{base}/site-packages"
    # shipped_prompts_dir() is prompts/ beside the installed node package
    assert shipped_prompts_dir().name == "prompts"
    assert copied["prompts"] == f"{site_packages}/{shipped_prompts_dir().name}"


def test_the_manifests_run_the_uid_the_image_creates() -> None:
    text = (ROOT / "Dockerfile").read_text()
    uid = int(re.findall(r"^USER (\d+)", text, re.MULTILINE)[-1])
    docs = documents(render(K8S / "overlays" / "site-a"))
    nodes = next(
        d for d in docs if d["kind"] == "StatefulSet" and d["metadata"]["name"] == "callmesh"
    )
    assert nodes["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == uid
