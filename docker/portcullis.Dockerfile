# Portcullis native binaries: one builder, three small runtime images.
#
#   docker build -f docker/portcullis.Dockerfile --target edge       -t portcullis/edge .
#   docker build -f docker/portcullis.Dockerfile --target connector  -t portcullis/connector .
#   docker build -f docker/portcullis.Dockerfile --target sample-app -t portcullis/sample-app .
#
# The build context is the repository root (see .dockerignore). The wasm filters are not built
# here: Envoy loads them from the host's target/wasm32-wasip1/release (`make build`), see
# docker-compose.yml and docs/deploy.md.

# The builder uses the same Debian release as the runtime, so the glibc the binaries link
# against is the one they run with.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --locked --profile native \
        -p portcullis-connector --bin portcullis-edge --bin portcullis-connector \
        -p portcullis-e2e --bin sample-app \
 && mkdir -p /out \
 && cp target/native/portcullis-edge target/native/portcullis-connector target/native/sample-app /out/

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
COPY --from=build /out/portcullis-edge /usr/local/bin/portcullis-edge
COPY docker/edge-start.sh /usr/local/bin/portcullis-edge-start
EXPOSE 8080 8441 8442 9102
ENTRYPOINT ["portcullis-edge-start"]

# The connector: inside the private network; dials out only. State (key, certificate, config
# cache) in /var/lib/portcullis/connector, written by `portcullis-connector-register`.
FROM runtime AS connector
COPY --from=build /out/portcullis-connector /usr/local/bin/portcullis-connector
COPY docker/connector-register.sh /usr/local/bin/portcullis-connector-register
ENTRYPOINT ["portcullis-connector"]
CMD ["run", "--state-dir", "/var/lib/portcullis/connector"]

# The demo's sample app: `sample-app ADDR NAME`; /headers echoes what it receives.
FROM runtime AS sample-app
COPY --from=build /out/sample-app /usr/local/bin/sample-app
EXPOSE 8081
ENTRYPOINT ["sample-app"]
CMD ["0.0.0.0:8081", "Portcullis sample app"]
