#!/usr/bin/env bash
# Benchmark: mailq on a large queue, Facteur against Postfix, in one run.
#
#   scripts/bench-mailq.sh [MESSAGES]        (default 100000)
#
# Each system gets one real held message (submitted with its own sendmail
# and a HOLD header check), whose queue file is then copied MESSAGES-1
# times under other valid queue IDs into hold/ — a queue of MESSAGES
# messages built in seconds instead of hours. Then `mailq` is timed three
# times for each (best time kept, output to /dev/null, line count
# checked), and the ratio printed. Needs root (Postfix's master) and
# postfix installed.
set -euo pipefail
cd "$(dirname "$0")/.."
top=$PWD
N=${1:-100000}
[ "$(id -u)" = 0 ] || { echo "bench-mailq: run as root (Postfix's master needs it)" >&2; exit 1; }
[ -x /usr/sbin/postfix ] || { echo "bench-mailq: postfix is needed (apt-get install postfix)" >&2; exit 1; }

echo "== building Facteur (release)"
cargo build --release --quiet --workspace --bins
bin=${FACTEUR_BIN:-$top/target/release}

work=$(mktemp -d /tmp/bench-mailq.XXXXXX)
chmod 755 "$work"
fapid=
cleanup() {
  /usr/sbin/postfix -c "$work/postfix/etc" stop >/dev/null 2>&1 || true
  [ -n "$fapid" ] && kill "$fapid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
trap "exit 130" INT TERM

printf '/^Subject: hold me/ HOLD\n' > "$work/header_checks"
common="compatibility_level = 3.6
myhostname = bench.example.test
mydestination = \$myhostname, localhost
inet_interfaces = loopback-only
inet_protocols = ipv4
alias_maps =
alias_database =
header_checks = regexp:$work/header_checks
maillog_file_prefixes = /var, /dev/stdout, /tmp"

# wait_file DIR: until DIR holds one file (bounded); prints its path.
wait_file() {
  for _ in $(seq 600); do
    f=$(find "$1" -type f | head -1)
    [ -n "$f" ] && { echo "$f"; return 0; }
    sleep 0.05
  done
  echo "bench-mailq: no message reached $1" >&2; return 1
}

# fill HOLD_DIR FILE: copies FILE under N-1 new short queue IDs.
fill() {
  local dir=$1 file=$2
  python3 - "$dir" "$file" "$N" <<'PY'
import os, shutil, sys
d, src, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
st = os.stat(src)
for i in range(1, n):
    # 5 hex digits of "microseconds", then a unique "inode" in hex.
    name = "%05X%X" % (i % 0x100000, 0x100000 + i)
    dst = os.path.join(d, name)
    shutil.copyfile(src, dst)
    os.chmod(dst, st.st_mode & 0o7777)
    os.chown(dst, st.st_uid, st.st_gid)
PY
}

# timeit CMD...: best of three, seconds; checks the listing's size.
timeit() {
  local best=
  for _ in 1 2 3; do
    local s e t
    s=$(date +%s.%N)
    "$@" > "$work/out"
    e=$(date +%s.%N)
    t=$(echo "$e - $s" | bc -l)
    if [ -z "$best" ] || [ "$(echo "$t < $best" | bc -l)" = 1 ]; then best=$t; fi
  done
  local n
  n=$(grep -c '^[0-9A-F]' "$work/out" || true)
  [ "$n" = "$N" ] || echo "warning: listing shows $n messages, expected $N" >&2
  echo "$best"
}

echo "== Postfix: $N held messages"
pf=$work/postfix
mkdir -p "$pf/etc" "$pf/data" "$pf/queue"
cp /etc/postfix/master.cf "$pf/etc/master.cf"
sed -i 's/^smtp\( *\)inet/#smtp\1inet/' "$pf/etc/master.cf"
printf '%s\nqueue_directory = %s\ndata_directory = %s\nmaillog_file = %s\n' \
  "$common" "$pf/queue" "$pf/data" "$pf/maillog" > "$pf/etc/main.cf"
chown postfix "$pf/data"
/usr/sbin/postfix -c "$pf/etc" start >/dev/null 2>&1
printf 'Subject: hold me\n\nbody\n' | /usr/sbin/sendmail -C "$pf/etc" -f a@example.org b@example.net
held=$(wait_file "$pf/queue/hold")
fill "$pf/queue/hold" "$held"
tp=$(timeit /usr/bin/mailq -C "$pf/etc")
/usr/sbin/postfix -c "$pf/etc" stop >/dev/null 2>&1 || true

echo "== Facteur: $N held messages"
fa=$work/facteur
mkdir -p "$fa/etc" "$fa/data"
cp conf/master.cf "$fa/etc/master.cf"
printf '%s\nqueue_directory = %s\ndata_directory = %s\ndaemon_directory = %s\nmail_owner = postfix\nsetgid_group = postdrop\nmaillog_file = %s\n' \
  "$common" "$fa/queue" "$fa/data" "$bin" "$fa/maillog" > "$fa/etc/main.cf"
chown postfix "$fa/data"
"$bin/facteur" -c "$fa/etc" set-permissions >/dev/null
"$bin/master" -d -c "$fa/etc" >/dev/null 2>&1 &
fapid=$!
for _ in $(seq 200); do [ -S "$fa/queue/public/pickup" ] && break; sleep 0.05; done
printf 'Subject: hold me\n\nbody\n' | "$bin/sendmail" -C "$fa/etc" -f a@example.org b@example.net
held=$(wait_file "$fa/queue/hold")
fill "$fa/queue/hold" "$held"
tf=$(timeit "$bin/mailq" -C "$fa/etc")

printf 'postfix mailq: %.3f s\nfacteur mailq: %.3f s\nspeed-up: %.2fx\n' "$tp" "$tf" "$(echo "$tp / $tf" | bc -l)"
