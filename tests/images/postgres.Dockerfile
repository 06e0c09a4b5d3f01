# Stand-in for postgres:15-bookworm in the compose test (used only when the
# public image cannot be pulled): Debian's PostgreSQL 15 with an entrypoint that
# honours the official image's POSTGRES_USER, POSTGRES_PASSWORD and POSTGRES_DB
# on first start, data in /var/lib/postgresql/data (a volume).
FROM debian:bookworm-slim
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postgresql-15 \
 && rm -rf /var/lib/apt/lists/* \
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
