#!/bin/bash
# dropvault's container entrypoint (Dockerfile, compose.yaml; docs/DEPLOY.md).
#
#   docker-entrypoint.sh [ARGS...]   wait for the key service and clamd when
#                                    configured, create a first user when
#                                    asked, then exec `dropvault ARGS`
#                                    (default: serve)
#   docker-entrypoint.sh healthcheck exit 0 when /readyz answers 200
#
# Configuration is dropvault's own: DROPVAULT_CONFIG and DROPVAULT_<SECTION>_<KEY>
# variables. Only these are the entrypoint's, and none reaches the server:
#   DROPVAULT_FIRST_USER           a user to create when the users file has none
#   DROPVAULT_FIRST_PASSWORD_FILE  that user's password, first line of this file
#                                  (a Docker/compose secret); or
#   DROPVAULT_FIRST_PASSWORD       the password itself
#   DROPVAULT_WAIT_SECS            how long to wait for the services (default 120)
#   DROPVAULT_BIN                  the dropvault binary (default: on PATH)
set -euo pipefail

bin=${DROPVAULT_BIN:-dropvault}
wait_secs=${DROPVAULT_WAIT_SECS:-120}
first_user=${DROPVAULT_FIRST_USER:-}
first_password=${DROPVAULT_FIRST_PASSWORD:-}
first_password_file=${DROPVAULT_FIRST_PASSWORD_FILE:-}
unset DROPVAULT_BIN DROPVAULT_WAIT_SECS DROPVAULT_FIRST_USER DROPVAULT_FIRST_PASSWORD \
    DROPVAULT_FIRST_PASSWORD_FILE

log() { echo "docker-entrypoint: $*" >&2; }

# until DESCRIPTION COMMAND...: run COMMAND every 2 s until it succeeds, at
# most DROPVAULT_WAIT_SECS; exit 1 when it never does.
until_ok() {
    local what=$1 deadline=$((SECONDS + wait_secs))
    shift
    until "$@"; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            log "$what: not ready after ${wait_secs}s; giving up"
            exit 1
        fi
        sleep 2
    done
    log "$what: ready"
}

# clamd_ping ADDRESS: clamd answers PING ("tcp:HOST:PORT"; a unix socket
# only has to exist, bash cannot connect to one).
clamd_ping() {
    case $1 in
        unix:*) [ -S "${1#unix:}" ] ;;
        tcp:*)
            local hostport=${1#tcp:} reply=
            # (The braces keep 2>/dev/null from staying on the shell.)
            { exec 3<>"/dev/tcp/${hostport%:*}/${hostport##*:}"; } 2>/dev/null || return 1
            printf 'zPING\0' >&3
            IFS= read -r -d '' -t 5 reply <&3 || true
            exec 3<&-
            [ "$reply" = PONG ]
            ;;
        *) return 0 ;;
    esac
}

# setting SECTION_KEY: a setting's value from its variable, else the
# configuration file ("key = value" under [section], simple values only).
setting() {
    local var="DROPVAULT_${1^^}"
    if [ -n "${!var:-}" ]; then
        printf '%s' "${!var}"
    elif [ -n "${DROPVAULT_CONFIG:-}" ] && [ -r "$DROPVAULT_CONFIG" ]; then
        awk -v section="${1%%_*}" -v key="${1#*_}" '
            /^[ \t]*\[/ { gsub(/[][ \t]/, ""); current = $0; next }
            current == section && $0 ~ "^[ \t]*" key "[ \t]*=" {
                sub(/^[^=]*=[ \t]*"?/, ""); sub(/"?[ \t]*(#.*)?$/, ""); print; exit
            }
        ' "$DROPVAULT_CONFIG"
    fi
}

# first_user: add DROPVAULT_FIRST_USER when the users file has no user yet.
create_first_user() {
    [ -n "$first_user" ] || return 0
    if [ -n "$("$bin" user list)" ]; then
        return 0
    fi
    if [ -n "$first_password_file" ]; then
        first_password=$(head -n 1 "$first_password_file")
    fi
    if [ -z "$first_password" ]; then
        log "DROPVAULT_FIRST_USER is set but neither DROPVAULT_FIRST_PASSWORD_FILE nor DROPVAULT_FIRST_PASSWORD"
        exit 1
    fi
    printf '%s\n' "$first_password" | "$bin" user add "$first_user" --password-stdin >/dev/null
    first_password=
    log "created the first user, $first_user"
}

healthcheck() {
    local listen reply=
    listen=$(setting admin_listen)
    listen=${listen:-127.0.0.1:9121}
    { exec 3<>"/dev/tcp/${listen%:*}/${listen##*:}"; } 2>/dev/null || exit 1
    printf 'GET /readyz HTTP/1.0\r\nHost: %s\r\n\r\n' "$listen" >&3
    IFS= read -r -t 5 reply <&3 || exit 1
    [[ $reply == "HTTP/1."?" 200"* ]]
}

if [ "${1:-}" = healthcheck ]; then
    healthcheck
    exit
fi

if [ "$(setting kms_provider)" = transit ]; then
    # keys status asks the key service for the key: address, token and key.
    until_ok "key service (transit)" "$bin" keys status >/dev/null
fi
clamd=$(setting scan_clamd)
if [ -n "$clamd" ]; then
    until_ok "clamd ($clamd)" clamd_ping "$clamd"
fi
create_first_user
[ "$#" -gt 0 ] || set -- serve
exec "$bin" "$@"
