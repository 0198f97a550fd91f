# syntax=docker/dockerfile:1
#
# portcullis container image.
#
#   docker build -t portcullis .
#   docker run --rm -p 8080:8080 -p 9090:9090 \
#       -v "$PWD/my-config:/etc/portcullis:ro" portcullis
#
# Configuration lives in /etc/portcullis/ (a VOLUME). Mount your own directory
# there, holding portcullis.toml and any files it names (htpasswd, TLS
# certificate and key, JWKS, ...). Relative paths in portcullis.toml resolve
# against that directory. The image's default contents are the repository's
# config/portcullis.toml and config/htpasswd. These are EXAMPLES with public
# passwords. They listen on 127.0.0.1:8080 inside the container on purpose,
# so the default image is unreachable from outside. A real config must listen
# on 0.0.0.0:8080 (and set admin_listen = "0.0.0.0:9090" for the admin port).
#
# The process runs as the unprivileged user 65532 ("nonroot"), so the files
# in a mounted directory must be readable by that uid. SIGTERM stops accepting
# connections and drains in-flight requests (server.shutdown_grace). Give
# `docker stop -t` at least that long. SIGHUP reloads the configuration.
# Needs BuildKit (the default builder since Docker 23) for the cache mounts.

# ---- build stage -------------------------------------------------------------
# Keep the build image on the same Debian release as the runtime image
# (bookworm = debian12) so the binary's glibc requirement matches.
FROM rust:1-bookworm AS build
WORKDIR /src

COPY . .

# The cache mounts keep the crate registry and the target directory between
# builds. The binary must be copied out of the cached target dir in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked \
    && install -D -m 0755 target/release/portcullis /out/portcullis \
    && /out/portcullis check --config config/portcullis.toml

# ---- runtime stage -----------------------------------------------------------
# distroless/cc: glibc, libgcc, CA certificates and tzdata. No shell, no
# package manager. The :nonroot tag runs as uid/gid 65532.
FROM gcr.io/distroless/cc-debian12:nonroot

LABEL org.opencontainers.image.title="portcullis" \
      org.opencontainers.image.description="Authenticating reverse proxy: Basic, Bearer and session auth in front of any website" \
      org.opencontainers.image.licenses="Apache-2.0"

COPY --from=build /out/portcullis /usr/local/bin/portcullis
# Default (example) configuration. It is owned by root and read-only for the
# service user, so a compromised process cannot rewrite its own config.
COPY --chown=0:0 --chmod=0644 config/portcullis.toml config/htpasswd /etc/portcullis/

VOLUME ["/etc/portcullis"]

USER 65532:65532
WORKDIR /etc/portcullis

# 8080: proxy listener (server.listen); 9090: admin listener (server.admin_listen).
EXPOSE 8080 9090

STOPSIGNAL SIGTERM

ENTRYPOINT ["/usr/local/bin/portcullis"]
CMD ["run", "--config", "/etc/portcullis/portcullis.toml"]
