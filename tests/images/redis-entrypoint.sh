#!/bin/sh
# As the official redis image: when the command is redis-server, listen on
# every address with protected mode off (the container network is private).
set -eu
if [ "${1:-}" = redis-server ]; then
  shift
  exec redis-server --bind '* -::*' --protected-mode no "$@"
fi
exec "$@"
