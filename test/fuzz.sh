#!/usr/bin/env bash
# Runs every fuzz target of the module for FUZZTIME each (go test allows
# one target per run). A target that finds a failure fails the run, with
# its input written under testdata/fuzz as go test does.
#
# One retry for one case only: Go's fuzzing engine can end a run whose time
# is up with "context deadline exceeded" and no failing input (a worker
# still busy when the deadline hits, more likely on a loaded machine). That
# is the toolchain's, not a finding; the target is run once more. A run
# that wrote a failing input is never retried.
set -euo pipefail
GO=${GO:-go}
FUZZTIME=${FUZZTIME:-30s}
for pkg in $($GO list ./...); do
	for f in $($GO test -list '^Fuzz' "$pkg" | grep '^Fuzz' || true); do
		for try in 1 2; do
			echo "== $pkg $f ($FUZZTIME)"
			if out=$($GO test -run '^$' -fuzz "^$f\$" -fuzztime "$FUZZTIME" "$pkg" 2>&1); then
				echo "$out"
				break
			fi
			echo "$out"
			if [ "$try" = 1 ] && ! grep -q 'Failing input written' <<<"$out" &&
				grep -q 'context deadline exceeded' <<<"$out"; then
				echo "== $f: the fuzzing engine's end-of-time error, no failing input: once more"
				continue
			fi
			exit 1
		done
	done
done
