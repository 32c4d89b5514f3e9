"""k8s/: HTTP authentication's keys. Each site's nodes get their site's own private key (a Secret
per site) and every site's public key (one ConfigMap, the same in every site); no cluster-wide
secret is left."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from node.config import NodeConfig
from tests.ops.tools import OVERLAYS, SITES, documents, render


@pytest.fixture(scope="module")
def rendered() -> dict[str, str]:
    return {site: render(OVERLAYS[site]) for site in SITES}


def mounted(pod: dict[str, Any], path: str) -> dict[str, Any]:
    """The volume that holds the file at `path` in the node container (the deepest mount)."""
    container = pod["containers"][0]
    mounts = [m for m in container["volumeMounts"] if path.startswith(m["mountPath"] + "/")]
    assert mounts, f"nothing mounted holds {path}"
    deepest = max(mounts, key=lambda m: len(m["mountPath"]))
    return next(v for v in pod["volumes"] if v["name"] == deepest["name"])


@pytest.mark.parametrize("site", SITES)
def test_nodes_get_their_sites_key_and_every_sites_public_key(
    rendered: dict[str, str], site: str, tmp_path: Path
) -> None:
    docs = documents(rendered[site])
    assert "CALLMESH_AUTH_SECRET" not in rendered[site]
    assert "callmesh-auth\n" not in rendered[site]
    pod = next(
        d for d in docs if d["metadata"]["name"] == "callmesh" and d["kind"] == "StatefulSet"
    )
    spec = pod["spec"]["template"]["spec"]
    env = {e["name"]: e.get("value") for e in spec["containers"][0]["env"]}
    key_volume = mounted(spec, env["CALLMESH_SITE_KEY"])
    assert key_volume["secret"]["secretName"] == "callmesh-site-key"
    assert key_volume["secret"]["defaultMode"] == 0o400
    ring_volume = mounted(spec, env["CALLMESH_SITE_KEYS_FILE"])
    ring_map = ring_volume["configMap"]["name"]
    assert ring_map.startswith("callmesh-site-keys")
    shipped = next(d for d in docs if d["metadata"]["name"] == ring_map)["data"]
    assert Path(env["CALLMESH_SITE_KEYS_FILE"]).name in shipped
    # the node's settings with authentication on are a valid config
    cm_env = next(d for d in docs if d["metadata"]["name"].startswith("callmesh-env"))["data"]
    environ = {
        **cm_env,
        **{k: v for k, v in env.items() if k.startswith("CALLMESH_") and "$(" not in str(v)},
        "CALLMESH_NODE_ID": "callmesh-0",
    }
    config = NodeConfig.load(None, environ)
    assert config.users_file
    assert config.site_key
    assert config.site_keys_file
