#!/usr/bin/env bash
# Runs every fuzz target of the given packages for FUZZTIME each.
#
# Go 1.26's fuzzing coordinator can fail a target at the end of a duration
# budget with a bare "context deadline exceeded" although nothing crashed
# (golang/go#75804, fixed in Go 1.27). Such a run is retried, at most twice,
# only when it has that exact signature: no failing input written, no panic,
# no other failure line. Every real finding still fails the run.
set -euo pipefail
GO=${GO:-go}
FUZZTIME=${FUZZTIME:-20s}
out=$(mktemp)
trap 'rm -f "$out"' EXIT

coordinator_race() {
	grep -q '^    context deadline exceeded$' "$out" &&
		! grep -q -e 'Failing input written' -e '^panic:' -e '_test.go:[0-9]*:' "$out"
}

for pkg in "$@"; do
	for fn in $($GO test -list '^Fuzz' "./$pkg" | grep '^Fuzz'); do
		for try in 1 2 3; do
			echo "== $pkg $fn for $FUZZTIME"
			if $GO test -run '^$' -fuzz "^$fn\$" -fuzztime "$FUZZTIME" "./$pkg" 2>&1 | tee "$out"; then
				break
			fi
			if [ "$try" = 3 ] || ! coordinator_race; then
				exit 1
			fi
			echo "== $fn: Go's fuzzing coordinator failed at its deadline with no finding (golang/go#75804); again"
		done
	done
done
