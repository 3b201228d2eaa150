#!/usr/bin/env bash
# Makes sure Fashion-MNIST can be found by fedmoe: already there (any lookup location),
# else Debian's dataset-fashion-mnist package when apt-get is usable, else fedmoe's
# verified download into the user cache.
set -euo pipefail
py=${1:-.venv/bin/python}

if "$py" -m fedmoe data info fashion-mnist >/dev/null 2>&1; then
  exit 0
fi

sudo=""
[ "$(id -u)" = 0 ] || sudo="sudo -n"
if command -v apt-get >/dev/null 2>&1 && { [ -z "$sudo" ] || sudo -n true 2>/dev/null; }; then
  echo "fedmoe: installing Debian's dataset-fashion-mnist" >&2
  if $sudo apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 \
     || { $sudo apt-get update -qq >/dev/null 2>&1 \
          && $sudo apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1; }; then
    "$py" -m fedmoe data info fashion-mnist >/dev/null && exit 0
  fi
  echo "fedmoe: apt-get could not install dataset-fashion-mnist; downloading instead" >&2
fi
"$py" -m fedmoe data fetch fashion-mnist
