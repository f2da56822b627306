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
	cd conformance && $(GO) test -count=1 -timeout 30m ./...

bench:
	$(GO) test -run '^$$' -bench . -benchmem ./server ./sqllog
	cd conformance && $(GO) test -run '^$$' -bench . -benchmem ./...

# etcdctl of the etcd release the conformance suite compares against.
etcdctl:
	cd conformance && $(GO) build -o ../$(BIN)/etcdctl go.etcd.io/etcd/etcdctl/v3

docker:
	docker build -t shimd .

clean:
	rm -rf $(BIN)
