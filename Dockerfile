# dropvault in a container (docs/DEPLOY.md; compose.yaml runs it with
# OpenBao transit and clamd). Build: docker build -t dropvault .
FROM rust:1-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends \
        cmake && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p dropvault && strip target/release/dropvault

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates libpam0g \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 dropvault \
    && useradd --system --uid 10001 --gid dropvault --home-dir /var/lib/dropvault \
        --no-create-home --shell /usr/sbin/nologin dropvault \
    && install -d -m 0700 -o dropvault -g dropvault /var/lib/dropvault
COPY --from=build /src/target/release/dropvault /usr/bin/dropvault
COPY packaging/docker-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
COPY packaging/pam.d/dropvault /etc/pam.d/dropvault

# A container listens on all its addresses; the published ports decide
# who reaches it. The admin listener stays on loopback (the health check).
ENV DROPVAULT_DATA_DIR=/var/lib/dropvault \
    DROPVAULT_FTP_LISTEN=0.0.0.0:2121 \
    DROPVAULT_SFTP_LISTEN=0.0.0.0:2222 \
    DROPVAULT_FTP_PASSIVE_PORTS=50000-50100 \
    DROPVAULT_LOG_FORMAT=json
USER dropvault
VOLUME ["/var/lib/dropvault"]
EXPOSE 2121 2222 50000-50100
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
    CMD ["/usr/local/bin/docker-entrypoint.sh", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/docker-entrypoint.sh"]
CMD ["serve"]
