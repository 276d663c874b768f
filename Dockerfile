# syntax=docker/dockerfile:1
#
# fluxgate in a distroless, non-root image.
#
# Build arguments:
#   RUST_VERSION   tag of the rust:<version>-bookworm build image (default 1: the newest 1.x;
#                  Cargo.toml's rust-version, 1.89, is the oldest that builds fluxgate)
#   BUILD_PROFILE  cargo profile (default release: LTO, one codegen unit, stripped)
#   FEATURES       extra cargo features, comma-separated (default: none)
#
#   docker build -t fluxgate .
#   docker build --build-arg RUST_VERSION=1.89 -t fluxgate .
#
# The build stage runs scripts/build-release, the same script CI runs, so the image holds the
# binary CI tested. The final stage is gcr.io/distroless/cc-debian12 (glibc, libgcc; the binary
# is linked dynamically against the glibc of Debian 12, which the build stage also uses).
#
# Running it (read-only root filesystem friendly):
#
#   docker run -d --name fluxgate --read-only \
#     -v /srv/fluxgate/etc:/etc/fluxgate:ro \
#     -v fluxgate-state:/var/lib/fluxgate \
#     -p 443:8443 \
#     fluxgate
#
# - /etc/fluxgate holds fluxgate.toml and the files it names (certificate, key, kubeconfig,
#   secret files), readable by uid 65532 (the image's "nonroot" user).
# - /var/lib/fluxgate is the durable relay queue (FLUXGATE__RELAY__QUEUE_DIR below); keep it on
#   a volume so queued deliveries survive a new container.
# - The admin listener (/healthz, /readyz, /metrics) stays on 127.0.0.1:9102 in the container by
#   default: the HEALTHCHECK below reaches it there. To probe or scrape it from outside (an
#   orchestrator's HTTP probes, Prometheus), publish it explicitly:
#     -e FLUXGATE__SERVER__ADMIN_LISTEN=0.0.0.0:9102 -p 127.0.0.1:9102:9102
#   Kubernetes ignores HEALTHCHECK; point its liveness probe at /healthz and its readiness
#   probe at /readyz on that port. If you move the admin listener to another port, override
#   the health check too (docker run --health-cmd, or a HEALTHCHECK in a derived image).
# - Every configuration key can be overridden as FLUXGATE__SECTION__KEY (-e ...).

ARG RUST_VERSION=1

FROM rust:${RUST_VERSION}-bookworm AS build
ARG BUILD_PROFILE=release
ARG FEATURES=
WORKDIR /src
COPY . .
# The caches keep downloaded crates and compiled dependencies between builds; the binary is
# copied out of them into /out by the script.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    BUILD_PROFILE="${BUILD_PROFILE}" FEATURES="${FEATURES}" scripts/build-release /out \
 && mkdir -p /out/state/queue

FROM gcr.io/distroless/cc-debian12:nonroot
LABEL org.opencontainers.image.title="fluxgate" \
      org.opencontainers.image.description="Edge gateway for Flux CD webhook receivers" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /out/fluxgate /usr/local/bin/fluxgate
# The queue directory, owned by nonroot so that a new named volume inherits the ownership.
COPY --from=build --chown=65532:65532 /out/state /var/lib/fluxgate
ENV FLUXGATE__RELAY__QUEUE_DIR=/var/lib/fluxgate/queue
USER nonroot
WORKDIR /var/lib/fluxgate
VOLUME /var/lib/fluxgate
# 8443: webhooks (HTTPS); 9102: the admin listener (private unless ADMIN_LISTEN is changed).
EXPOSE 8443 9102
# No curl in distroless: fluxgate probes its own admin listener (exit 0 on 200). /healthz, not
# /readyz: while the Kubernetes API is unreachable fluxgate still accepts and queues
# deliveries, so it is healthy, just not ready.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
  CMD ["/usr/local/bin/fluxgate", "probe", "http://127.0.0.1:9102/healthz"]
ENTRYPOINT ["/usr/local/bin/fluxgate"]
CMD ["serve", "--config", "/etc/fluxgate/fluxgate.toml"]
