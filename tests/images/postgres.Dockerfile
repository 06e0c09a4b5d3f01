# Stand-in for pgvector/pgvector:pg15 in the compose test (used only when the
# public image cannot be pulled): Debian's PostgreSQL 15 with pgvector, and an
# entrypoint that honours the official image's POSTGRES_USER,
# POSTGRES_PASSWORD and POSTGRES_DB on first start, data in
# /var/lib/postgresql/data (a volume).
#
# pgvector: Debian 12 packages none for PostgreSQL 15, so the build stage makes
# the .deb the way scripts/install-deps does on a host (scripts/install-pgvector:
# Debian trixie's pgvector source package built for PostgreSQL 15), and the
# final image installs only that .deb.
FROM debian:bookworm-slim AS pgvector
COPY scripts/install-pgvector /usr/local/bin/install-pgvector
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ca-certificates \
 && install-pgvector --deb-only /out

FROM debian:bookworm-slim
COPY --from=pgvector /out/ /tmp/pgvector/
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postgresql-15 /tmp/pgvector/*.deb \
 && rm -rf /var/lib/apt/lists/* /tmp/pgvector \
 && test -f /usr/share/postgresql/15/extension/vector.control \
 && mkdir -p /var/lib/postgresql/data /var/run/postgresql \
 && chown -R postgres:postgres /var/lib/postgresql /var/run/postgresql \
 && chmod 0700 /var/lib/postgresql/data
COPY tests/images/postgres-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
ENV PATH=/usr/lib/postgresql/15/bin:$PATH PGDATA=/var/lib/postgresql/data
VOLUME /var/lib/postgresql/data
USER postgres
EXPOSE 5432
# Smart shutdown waits for clients; fast shutdown (SIGINT) as the official image.
STOPSIGNAL SIGINT
ENTRYPOINT ["/usr/local/bin/docker-entrypoint.sh"]
CMD ["postgres"]
