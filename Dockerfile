# syntax=docker/dockerfile:1
# replproxy: a static binary on distroless, running as a numeric non-root user.
ARG GO_VERSION=1.26

FROM --platform=$BUILDPLATFORM golang:${GO_VERSION}-bookworm AS build
ARG TARGETOS=linux
ARG TARGETARCH=amd64
ARG VERSION=dev
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 GOOS=${TARGETOS} GOARCH=${TARGETARCH} \
    go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/replproxy ./cmd/replproxy

FROM gcr.io/distroless/static-debian12:nonroot
ARG VERSION=dev
LABEL org.opencontainers.image.title="replproxy" \
      org.opencontainers.image.description="Replication sidecar proxy for stock Redis: snapshot fan-out and a disk-backed PSYNC backlog" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /out/replproxy /usr/local/bin/replproxy
USER 65532:65532
# 6380: replication (replicas connect here); 9380: /metrics, /livez, /readyz.
EXPOSE 6380 9380
VOLUME ["/data"]
ENV REPLPROXY_DATA_DIR=/data
HEALTHCHECK --interval=10s --timeout=5s --retries=3 CMD ["/usr/local/bin/replproxy", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/replproxy"]
