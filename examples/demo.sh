#!/usr/bin/env bash
# A one-minute tour of amplihack remote on the local backend: no Azure account needed.
# It builds the tool, starts three agent sessions on this machine (with the demo agent,
# examples/demo-agent.sh), lists them, reads one's output, kills one, waits for the rest and
# shows what each produced (report) and the pool status. Everything lives in a temporary directory with its
# own tmux server, so your own state file, workspaces and tmux sessions are not touched.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/ensure-tools.sh
echo "Building amplihack (release)..."
cargo build --release --locked --quiet
bin=$PWD/target/release/amplihack

demo=$(mktemp -d)
export HOME=$demo/home TMUX_TMPDIR=$demo/tmux
mkdir -p "$HOME" "$TMUX_TMPDIR"
unset TMUX
trap 'tmux kill-server 2>/dev/null || true; rm -rf "$demo"' EXIT
export AMPLIHACK_REMOTE_BACKEND=local AMPLIHACK_LOCAL_SLOTS=3
export AMPLIHACK_REMOTE_AGENT=$PWD/examples/demo-agent.sh
export DEMO_AGENT_STEP=${DEMO_AGENT_STEP:-4}

step() { printf '\n\033[1m$ amplihack remote %s\033[0m\n' "$*"; "$bin" remote "$@"; }

printf '\n\033[1m$ amplihack remote start --no-context "add a README badge" "refactor the config parser" "this one will fail"\033[0m\n'
started=$("$bin" remote start --no-context "add a README badge" "refactor the config parser" "this one will fail")
echo "$started"
# The ids, in prompt order, from the "[i/N] sess-..." lines.
mapfile -t sessions < <(sed -n 's/^\[[0-9]*\/[0-9]*\] \(sess-[0-9a-f-]*\)$/\1/p' <<<"$started")
step list
sleep 6
step output "${sessions[0]}" --lines 5
step kill "${sessions[1]}"
# wait blocks until the sessions end, printing each end; it exits 1 here, since one session
# was killed and one fails on purpose.
step wait || true
step report
step status
echo
echo "Done: ${#sessions[@]} sessions ran on this machine. The same commands drive Azure VMs through azlin."
