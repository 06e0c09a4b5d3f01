#!/bin/bash
# `ollama` inside the Ollama test-double image: just enough of the real CLI for
# compose/core.yml. `list` prints the models (fails when the server does not
# answer: the health check); `pull MODEL` succeeds when the server answers
# (the double serves every model name). The server is $OLLAMA_HOST
# (http://host:port, default 127.0.0.1:11434). No curl in the image: bash's
# /dev/tcp speaks HTTP/1.0.
set -euo pipefail
hostport=${OLLAMA_HOST:-127.0.0.1:11434}
hostport=${hostport#http://}
hostport=${hostport%/}
host=${hostport%:*}
port=${hostport##*:}
[ "$port" != "$hostport" ] || port=11434

get() { # path: prints the body; fails unless the status is 200
  local status
  exec 3<>"/dev/tcp/$host/$port"
  printf 'GET %s HTTP/1.0\r\nHost: %s\r\n\r\n' "$1" "$host" >&3
  IFS= read -r status <&3
  case "$status" in "HTTP/1."?" 200"*) ;; *) echo "ollama: GET $1: ${status:-no answer}" >&2; return 1 ;; esac
  while IFS= read -r line <&3 && [ "${line%$'\r'}" != "" ]; do :; done
  cat <&3
}

case "${1:-}" in
  list) get /api/tags; echo ;;
  pull) [ -n "${2:-}" ] || { echo "usage: ollama pull MODEL" >&2; exit 2; }
        get /api/version >/dev/null; echo "pulled $2 (test double: every model is served)" ;;
  *) echo "ollama (test double CLI): list | pull MODEL" >&2; exit 2 ;;
esac
