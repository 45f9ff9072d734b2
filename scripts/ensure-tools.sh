#!/usr/bin/env bash
# Installs what amplihack remote needs on this machine when it is missing: tmux (sessions run
# in it) and git (context bundles). With --for-tests also what the test suite uses: shellcheck
# (checks the scripts that run on VMs) and zsh and fish (check the completion scripts it
# generates). Uses apt-get (as root, or through sudo), dnf or brew.
set -euo pipefail
tools=(tmux git)
[ "${1:-}" = --for-tests ] && tools+=(shellcheck zsh fish)
missing=()
for tool in "${tools[@]}"; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
[ ${#missing[@]} -eq 0 ] && exit 0
echo "Installing ${missing[*]}..." >&2
sudo=
[ "$(id -u)" = 0 ] || sudo=sudo
if command -v apt-get >/dev/null 2>&1; then
  $sudo apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >&2
elif command -v dnf >/dev/null 2>&1; then
  $sudo dnf install -y "${missing[@]}" >&2
elif command -v brew >/dev/null 2>&1; then
  brew install "${missing[@]}" >&2
else
  echo "Please install ${missing[*]} with your package manager, then run this again." >&2
  exit 1
fi
