#!/usr/bin/env bash
# Installs what `make images` needs from Debian, once: mmdebstrap, which
# builds the images' root file systems from the packages this machine's apt
# sources serve. Idempotent and quiet when it is already there.
set -euo pipefail
need=()
command -v mmdebstrap >/dev/null 2>&1 || need+=(mmdebstrap)
exec "$(dirname "$0")/apt-install.sh" images "${need[@]}"
