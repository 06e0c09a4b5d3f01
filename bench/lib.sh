# bench/lib.sh: sourced by the bench scripts (after they cd to the repository
# root). Gives TMP (a temporary directory), PIDS (background processes to
# kill), both cleaned up at exit, free_port and wait_port PORT (up to
# WAIT_PORT_TRIES x 50 ms, default 100; valgrind start-ups need more).
TMP=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$TMP"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq "${WAIT_PORT_TRIES:-100}"); do (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 not up" >&2; exit 1; }
