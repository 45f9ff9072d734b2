#!/usr/bin/env bash
# Runs the whole test suite: shellcheck of the scripts that run on VMs, unit tests, and
# integration tests that drive the built binary against the stand-in azlin with real tmux and
# git. Installs what is missing first (tmux, git, shellcheck, and zsh and fish, which check the
# completion scripts).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/ensure-tools.sh --for-tests
shellcheck -x src/remote/vm/*.sh
cargo test --locked
