#!/usr/bin/env bash
# Checks the build without libtorch (`cargo build --no-default-features`, the cargo feature
# `model` off): the binary links no libtorch, samples (and stops quietly when its reader goes
# away), serves a coordinator with an oracle worker that answers a tree over gRPC (and, with a
# token file, only to a client with a token), and refuses the model commands with a message that
# names the feature.
#
#   scripts/check-lean.sh PATH/TO/hch
set -euo pipefail
hch=${1:?usage: scripts/check-lean.sh PATH/TO/hch}
fail() { echo "check-lean: FAIL: $*" >&2; exit 1; }

if ldd "$hch" | grep -q torch; then
    fail "$hch links libtorch: $(ldd "$hch" | grep torch | tr '\n' ' ')"
fi

# A reader that stops after one line: the rest of the output hits a closed pipe.
first=$("$hch" sample -d wildcard --size 8 --questions 200000 | head -n 1)
[[ -n "$first" ]] || fail "hch sample printed nothing"

for command in train report demo model-bench; do
    if out=$("$hch" "$command" 2>&1); then
        fail "hch $command ran in a build without the model feature"
    fi
    grep -q "feature" <<<"$out" || fail "hch $command: unclear refusal: $out"
done
if out=$("$hch" worker --registry /nonexistent --domain wildcard 2>&1); then
    fail "a model worker started in a build without the model feature"
fi
grep -q "feature" <<<"$out" || fail "hch worker --registry: unclear refusal: $out"

# Starts `hch up` with the given extra arguments; sets $up (its pid) and $addr (the coordinator's
# address, once it has announced it).
log=$(mktemp)
trap 'kill $up 2>/dev/null || true; rm -f "$log"' EXIT
start_up() {
    "$hch" up --workers 1 --oracle --listen 127.0.0.1:0 "$@" >"$log" 2>&1 &
    up=$!
    addr=""
    for _ in $(seq 1 200); do
        addr=$(sed -n 's/^coordinator listening on //p' "$log")
        [[ -n "$addr" ]] && return
        kill -0 $up 2>/dev/null || fail "hch up $* exited: $(cat "$log")"
        sleep 0.05
    done
    fail "hch up $* did not announce its address: $(cat "$log")"
}

start_up
answer=$("$hch" ask --addr "http://$addr" -d wildcard --instance '010011:+1 110000:-1' \
    -q '*1****' --mode hch:2)
grep -q "= 0$" <<<"$(head -n 1 <<<"$answer")" || fail "unexpected answer: $answer"
kill -TERM $up
wait $up || fail "hch up did not shut down cleanly on SIGTERM"

# Client tokens: `hch token` makes one, a coordinator started with the file refuses a call
# without it and answers one with it.
made=$("$hch" token smoke --rights ask)
token=$(sed -n 's/^token (give to smoke): //p' <<<"$made")
entry=$(sed -n "s/^entry (add to the coordinator's token file): //p" <<<"$made")
[[ -n "$token" && -n "$entry" ]] || fail "hch token printed: $made"
tokens=$(mktemp)
echo "{\"clients\": [$entry]}" >"$tokens"
start_up --tokens "$tokens"
if out=$("$hch" ask --addr "http://$addr" -d wildcard --instance '010011:+1 110000:-1' \
    -q '*1****' --mode hch:2 2>&1); then
    fail "a coordinator with tokens answered a call without one"
fi
grep -q "Unauthenticated" <<<"$out" || fail "no token: unexpected error: $out"
"$hch" ask --addr "http://$addr" --token "$token" -d wildcard \
    --instance '010011:+1 110000:-1' -q '*1****' --mode hch:2 >/dev/null ||
    fail "the token was refused"
kill -TERM $up
wait $up || fail "hch up --tokens did not shut down cleanly on SIGTERM"
trap - EXIT
rm -f "$log" "$tokens"
echo "check-lean: ok (no libtorch; sample, up, ask, tokens; model commands refused)"
