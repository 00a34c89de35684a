#!/usr/bin/env bash
# One-time setup on a fresh Debian machine with python3: the embedded dataset (Debian package), headless Chromium for
# the web page's tests, nginx for the replicas' test, a virtual environment in .venv, and this project with its test
# extras. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
[ -d /usr/share/datasets/fashion-mnist ] || need_apt+=(dataset-fashion-mnist)
command -v curl >/dev/null || need_apt+=(curl)
python3 -c "import ensurepip, venv" 2>/dev/null || need_apt+=(python3-venv)  # Debian splits venv out of python3
command -v chromium >/dev/null || need_apt+=(chromium)               # headless browser of the page's tests
command -v chromedriver >/dev/null || need_apt+=(chromium-driver)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need_apt+=(nginx)  # the edge of the replicas test
if [ ${#need_apt[@]} -gt 0 ] && command -v apt-get >/dev/null; then
  sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[dev]'
