package main

import "testing"

// The tool's output as go.etcd.io/etcd/pkg/v3/report prints it with
// --precise (watch-latency: two summaries, the watch events' measured).
const toolOutput = `
Put summary:

Summary:
  Total:	1.000000 secs.
  Slowest:	0.010000 secs.
  Fastest:	0.000100 secs.
  Average:	0.002000 secs.
  Stddev:	0.001000 secs.
  Requests/sec:	100.000000

Response time histogram:
  0.000100 [1]	|

Latency distribution:
  10% in 0.000500 secs.
  50% in 0.001500 secs.
  99% in 0.009000 secs.

Watch events summary:

Summary:
  Total:	1.000000 secs.
  Slowest:	0.020000 secs.
  Fastest:	0.000000 secs.
  Average:	0.003000 secs.
  Stddev:	0.001000 secs.
  Requests/sec:	10000.000000

Latency distribution:
  10% in 0.000200 secs.
  50% in 0.002500 secs.
  90% in 0.004000 secs.
  99% in 0.012500 secs.
  99.9% in 0.019000 secs.

Error distribution:
  [3]	context deadline exceeded
`

func TestParseToolSummary(t *testing.T) {
	put, err := parseToolSummary(toolOutput, "")
	if err != nil {
		t.Fatal(err)
	}
	if put.rps != 100 || put.avg != 0.002 || put.p50 != 0.0015 || put.p99 != 0.009 {
		t.Errorf("first summary: %+v", put)
	}
	w, err := parseToolSummary(toolOutput, "Watch events summary:")
	if err != nil {
		t.Fatal(err)
	}
	if w.avg != 0.003 || w.p50 != 0.0025 || w.p99 != 0.0125 || w.errors != 3 || w.errorText != "context deadline exceeded" {
		t.Errorf("watch summary: %+v", w)
	}
	if _, err := parseToolSummary("bench with linearizable range\n", ""); err == nil {
		t.Error("no summary: want an error")
	}
}
