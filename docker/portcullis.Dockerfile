# Portcullis from source: one builder (the native binaries and the four .wasm filters), three
# small runtime images and an Envoy image with the filters inside.
#
#   docker build -f docker/portcullis.Dockerfile --target edge       -t portcullis/edge .
#   docker build -f docker/portcullis.Dockerfile --target connector  -t portcullis/connector .
#   docker build -f docker/portcullis.Dockerfile --target sample-app -t portcullis/sample-app .
#   docker build -f docker/portcullis.Dockerfile --target envoy      -t portcullis/envoy .
#
# The build context is the repository root (see .dockerignore); nothing needs to be built on the
# host first. Files leave the builder under their repository paths (/src/<path>), so
# scripts/check_deploy.py can tell which build step makes each of them.

# The builder uses the same Debian release as the runtime, so the glibc the binaries link
# against is the one they run with.
FROM rust:1.95-bookworm AS build
RUN rustup target add wasm32-wasip1
WORKDIR /src
COPY . .
# The native binaries use the `native` profile (target/native): panic = unwind, so a panic
# ends one task, not every tunnel. The wasm filters use `release` (panic = abort).
RUN cargo build --locked --profile native \
        -p portcullis-connector --bin portcullis-edge --bin portcullis-connector \
        -p portcullis-e2e --bin sample-app \
 && cargo build --locked --release --target wasm32-wasip1 \
        -p portcullis-robots -p portcullis-preauth -p portcullis-conditional-access -p portcullis-cookie

FROM debian:bookworm-slim AS runtime
# ca-certificates: for https JWKS URLs and CA-verified backends. No shell tools beyond bash are
# needed: the health checks use bash's /dev/tcp and /proc (docker/healthcheck.sh).
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 portcullis \
 && useradd --system --uid 10001 --gid portcullis --home-dir /var/lib/portcullis \
        --shell /usr/sbin/nologin portcullis \
 && mkdir -p /etc/portcullis /var/lib/portcullis/edge /var/lib/portcullis/edge-public \
        /var/lib/portcullis/connector /var/lib/portcullis/token \
 && chown -R portcullis:portcullis /var/lib/portcullis \
 && chmod 0700 /var/lib/portcullis/edge /var/lib/portcullis/connector
COPY docker/healthcheck.sh /usr/local/bin/portcullis-healthcheck
USER portcullis:portcullis
WORKDIR /var/lib/portcullis

# The edge service: next to Envoy; owns the connector CA (in /var/lib/portcullis/edge, keep it
# on a volume) and reads /etc/portcullis/edge.json. The entry point publishes the CA
# certificate and fingerprint (not the key) to /var/lib/portcullis/edge-public, then runs
# `portcullis-edge run`; other subcommands: `docker run --entrypoint portcullis-edge ...`.
FROM runtime AS edge
COPY --from=build /src/target/native/portcullis-edge /usr/local/bin/portcullis-edge
COPY docker/edge-start.sh /usr/local/bin/portcullis-edge-start
EXPOSE 8080 8441 8442 9102
ENTRYPOINT ["portcullis-edge-start"]

# The connector: inside the private network; dials out only. State (key, certificate, config
# cache) in /var/lib/portcullis/connector, written by `portcullis-connector-register`.
FROM runtime AS connector
COPY --from=build /src/target/native/portcullis-connector /usr/local/bin/portcullis-connector
COPY docker/connector-register.sh /usr/local/bin/portcullis-connector-register
ENTRYPOINT ["portcullis-connector"]
CMD ["run", "--state-dir", "/var/lib/portcullis/connector"]

# The demo's sample app: `sample-app ADDR NAME`; /headers echoes what it receives.
FROM runtime AS sample-app
COPY --from=build /src/target/native/sample-app /usr/local/bin/sample-app
EXPOSE 8081
ENTRYPOINT ["sample-app"]
CMD ["0.0.0.0:8081", "Portcullis sample app"]

# Envoy with the four filters: the image the tests' Envoy version comes from, the modules from
# the builder, the compose config and its demo certificate, the entry and health-check scripts,
# all under /portcullis with their repository paths (the config's relative paths resolve there).
# It runs as the edge's user (10001), so it may open the edge's socket (mode 0600).
FROM envoyproxy/envoy:v1.40.0 AS envoy
WORKDIR /portcullis
COPY --from=build /src/target/wasm32-wasip1/release/portcullis_robots.wasm \
     /src/target/wasm32-wasip1/release/portcullis_preauth.wasm \
     /src/target/wasm32-wasip1/release/portcullis_conditional_access.wasm \
     /src/target/wasm32-wasip1/release/portcullis_cookie.wasm \
     /portcullis/target/wasm32-wasip1/release/
COPY envoy-configs/compose.yaml /portcullis/envoy-configs/compose.yaml
COPY --chmod=0444 envoy-configs/certs/demo.crt envoy-configs/certs/demo.key /portcullis/envoy-configs/certs/
COPY docker/envoy-start.sh docker/healthcheck.sh /portcullis/docker/
USER 10001:10001
EXPOSE 10000 10443 9901
CMD ["/portcullis/docker/envoy-start.sh"]
