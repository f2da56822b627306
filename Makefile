# shimd — the usual entry points. `make test` is the README's test command.
GO ?= go
BIN := bin

.PHONY: all build run test unit conformance vet bench etcdctl docker clean

all: build

build:
	CGO_ENABLED=0 $(GO) build -o $(BIN)/shimd ./cmd/shimd

run:
	$(GO) run ./cmd/shimd

# Everything: static checks, unit tests, then the differential suite against real etcd.
test: vet unit conformance

vet:
	$(GO) vet ./...
	cd conformance && $(GO) vet ./...

unit:
	$(GO) test -count=1 ./...

conformance:
	cd conformance && $(GO) test -count=1 -timeout 50m ./...

# In-process benchmarks of the hot paths, the watch latency between two
# shimd processes on PostgreSQL and MariaDB, write latency during a large
# compaction (BenchmarkCompactionStall), then the load generator against a
# real etcd 3.7, shimd on SQLite, PostgreSQL and MariaDB, and kine on
# PostgreSQL, each a separate process (conformance/bench; flags:
# make bench BENCH_FLAGS='--runs 3 --history 10'), then etcd's own benchmark
# tool (put, range, txn-put, watch-latency) against etcd and shimd on each
# database (flags: BENCH_TOOL_FLAGS='--tool-total 50000 --runs 3').
bench:
	$(GO) test -run '^$$' -bench . -benchmem ./server ./sqllog
	cd conformance && $(GO) test -run '^$$' -bench CrossProcessLatency -benchtime 200x .
	cd conformance && $(GO) test -run '^$$' -bench CompactionStall -benchtime 1x .
	cd conformance && $(GO) run ./bench $(BENCH_FLAGS)
	cd conformance && $(GO) run ./bench --etcd-tool $(BENCH_TOOL_FLAGS)

# etcdctl of the etcd release the conformance suite compares against.
etcdctl:
	cd conformance && $(GO) build -o ../$(BIN)/etcdctl go.etcd.io/etcd/etcdctl/v3

docker:
	docker build -t shimd .

clean:
	rm -rf $(BIN)

# A real kube-apiserver and kubectl of each Kubernetes release in
# conformance/kube/k8s (built once per version from the Go module proxy into
# conformance/kube/.cache/bin/<version>) on shimd with SQLite (also with
# --watch-cache=false and over mTLS), PostgreSQL, MariaDB, and on the
# reference etcd. KUBE_VERSIONS=1.37 KUBE_BACKENDS=sqlite make kube runs one;
# see conformance/kube/README.md.
.PHONY: kube
kube:
	cd conformance/kube && $(GO) test -count=1 -timeout 150m -v -run TestKubeAPIServer .

# k8s.io/apiserver v0.37.2's own storage tests (packages storage/etcd3 and
# storage/cacher), unchanged but for their server: against embedded etcd
# 3.7.3, then shimd on SQLite, PostgreSQL and MariaDB; every test must end
# as on etcd (~14 min warm; KUBE_STORAGE_BACKENDS=sqlite for one backend;
# see conformance/kube/README.md).
.PHONY: kube-storage
kube-storage:
	cd conformance/kube/storage/v0.37 && $(GO) test -count=1 -timeout 90m -v -run TestAPIServerStorage .

# Every fuzz target of the server (request validation and application) and
# of the revision log (ranges and key encoding against an in-memory model),
# each for FUZZTIME (make fuzz FUZZTIME=2m). Seed corpora are in
# server/testdata/fuzz and sqllog/testdata/fuzz (plain `go test` runs them
# too); an input that fails is written there, and `go test -run
# 'FuzzName/<file>' ./server` replays it. scripts/fuzz.sh explains its one
# retry (a Go 1.26 coordinator race).
FUZZTIME ?= 20s
.PHONY: fuzz
fuzz:
	GO=$(GO) FUZZTIME=$(FUZZTIME) scripts/fuzz.sh server sqllog
