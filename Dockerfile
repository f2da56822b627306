# Build a static shimd (pure-Go SQLite, so no cgo) and ship it alone.
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY shimd.go open.go run.go serve.go wake.go ./
COPY auth ./auth
COPY cmd ./cmd
COPY compact ./compact
COPY drivers ./drivers
COPY peerwake ./peerwake
COPY server ./server
COPY sqllog ./sqllog
RUN CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o /out/shimd ./cmd/shimd \
 && mkdir -p /out/data

# distroless: no shell, no curl; `shimd healthcheck` is the health check.
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/shimd /usr/local/bin/shimd
# The data dir must belong to the non-root user before it becomes a volume.
COPY --from=build --chown=65532:65532 /out/data /var/lib/shimd
USER 65532:65532
# The SQLite database (the default backend): mount a volume here to keep
# it. With --endpoint naming PostgreSQL or MySQL nothing is stored in it.
VOLUME /var/lib/shimd
# Clients: etcd's gRPC API, and HTTP /health, /livez, /readyz, /version and
# /metrics on the same port. shimd's default, http://127.0.0.1:2379, reaches
# nothing outside the container: opening the port is the user's choice, made
# with --listen-client-urls, in cleartext (http://0.0.0.0:2379) or better
# with TLS (https://0.0.0.0:2379 and --cert-file, --key-file,
# --trusted-ca-file, --client-cert-auth). See docs/operations.md.
EXPOSE 2379
# Healthy while the database answers. NOSPACE is excluded: a full quota
# needs an operator (compact, defragment, disarm), not a restart. The check
# asks 127.0.0.1:2379; if you move the client port, or require client
# certificates on it, point --url at a --listen-metrics-urls URL instead.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
  CMD ["/usr/local/bin/shimd", "healthcheck", "--url", "http://127.0.0.1:2379/health?exclude=NOSPACE"]
# Flags given to `docker run IMAGE ...` are appended, and win over these.
ENTRYPOINT ["/usr/local/bin/shimd", "--data-dir=/var/lib/shimd"]
