# Build a static shimd (pure-Go SQLite, so no cgo) and ship it alone.
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY cmd ./cmd
COPY drivers ./drivers
COPY server ./server
COPY sqllog ./sqllog
RUN CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o /out/shimd ./cmd/shimd \
 && mkdir -p /out/data

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/shimd /usr/local/bin/shimd
# The data dir must belong to the non-root user before it becomes a volume.
COPY --from=build --chown=65532:65532 /out/data /var/lib/shimd
USER 65532:65532
VOLUME /var/lib/shimd
EXPOSE 2379
ENTRYPOINT ["/usr/local/bin/shimd", "--data-dir=/var/lib/shimd", "--listen-client-urls=http://0.0.0.0:2379"]
