#!/bin/sh
# docker-entrypoint.sh [postgres [ARGS...]]: the part of the official postgres image's
# entrypoint that docker-compose.yml relies on (deploy/compose/postgres/Dockerfile).
#
# On the first start (no $PGDATA/PG_VERSION): initdb with POSTGRES_USER (default postgres)
# as the superuser and its password from POSTGRES_PASSWORD or POSTGRES_PASSWORD_FILE (one,
# not both; trailing newlines dropped), scram-sha-256 for TCP from anywhere
# (POSTGRES_HOST_AUTH_METHOD), trust on the local socket; then, on a server listening on
# the socket only, CREATE DATABASE POSTGRES_DB (default: the user's name) and the files
# of /docker-entrypoint-initdb.d (*.sql through psql, *.sh sourced). Then, and on every
# later start, exec postgres listening on every interface. Any other command is exec'd.
set -eu

if [ "${1:-}" != postgres ]; then
    exec "$@"
fi
shift

PGDATA=${PGDATA:-/var/lib/postgresql/data}
export PGDATA
# The socket directory: compose mounts a tmpfs on /run, which Docker leaves empty (mode
# 1777) and podman fills with the image's /run/postgresql. Like the official entrypoint.
mkdir -p /var/run/postgresql 2>/dev/null || :
user=${POSTGRES_USER:-postgres}
db=${POSTGRES_DB:-$user}
auth=${POSTGRES_HOST_AUTH_METHOD:-scram-sha-256}

if [ -n "${POSTGRES_PASSWORD_FILE:-}" ]; then
    if [ -n "${POSTGRES_PASSWORD:-}" ]; then
        echo "error: both POSTGRES_PASSWORD and POSTGRES_PASSWORD_FILE are set (but are exclusive)" >&2
        exit 1
    fi
    POSTGRES_PASSWORD=$(cat "$POSTGRES_PASSWORD_FILE")
fi

if [ ! -s "$PGDATA/PG_VERSION" ]; then
    if [ -z "${POSTGRES_PASSWORD:-}" ] && [ "$auth" != trust ]; then
        echo "error: the database is uninitialized and no superuser password is given:" \
            "set POSTGRES_PASSWORD or POSTGRES_PASSWORD_FILE" >&2
        exit 1
    fi
    mkdir -p "$PGDATA"
    chmod 0700 "$PGDATA" 2>/dev/null || :
    pwfile=$(mktemp)
    printf '%s\n' "${POSTGRES_PASSWORD:-}" > "$pwfile"
    # shellcheck disable=SC2086 # POSTGRES_INITDB_ARGS is a list of arguments
    initdb --username="$user" --pwfile="$pwfile" --auth-local=trust --auth-host="$auth" \
        ${POSTGRES_INITDB_ARGS:-}
    rm -f "$pwfile"
    printf '\nhost all all all %s\n' "$auth" >> "$PGDATA/pg_hba.conf"
    printf "\nlisten_addresses = '*'\n" >> "$PGDATA/postgresql.conf"

    pg_ctl -D "$PGDATA" -w -o "-c listen_addresses=''" start
    if [ "$db" != postgres ]; then
        printf 'CREATE DATABASE :"db";\n' \
            | psql -v ON_ERROR_STOP=1 -v db="$db" --username="$user" --dbname=postgres -q
    fi
    for f in /docker-entrypoint-initdb.d/*; do
        case "$f" in
            *.sql) psql -v ON_ERROR_STOP=1 --username="$user" --dbname="$db" -q -f "$f" ;;
            # shellcheck disable=SC1090 # the image's user supplies them
            *.sh) . "$f" ;;
        esac
    done
    pg_ctl -D "$PGDATA" -m fast -w stop
    echo "docker-entrypoint: PostgreSQL init process complete; ready for start up."
fi

exec postgres "$@"
