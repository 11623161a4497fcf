#!/usr/bin/env bash
# Benchmark (not a test): Facteur's postmap against Postfix's on a
# 1,000,000-entry table.
#
#  1. build hash:src with each postmap (wall time, peak RSS);
#  2. 1,000,000 random-key lookups through each (`postmap -q - hash:src`
#     with the keys on stdin; 10% of them absent);
#  3. the in-process lookup micro-benchmark
#     (libmail/examples/table_lookup_bench.rs).
#
# Needs Postfix (/usr/sbin/postmap) and GNU time (/usr/bin/time); installs
# `time` when it is missing. Usage: scripts/bench-tables.sh [ENTRIES]
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-1000000}

if [ ! -x /usr/sbin/postmap ]; then
  echo "bench-tables.sh: /usr/sbin/postmap is missing: run scripts/test.sh (installs Postfix)" >&2
  exit 1
fi
if [ ! -x /usr/bin/time ]; then
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get install -y -qq time >/dev/null
fi

cargo build --release -q -p facteur-commands --bin postmap
cargo build --release -q -p libmail --example table_lookup_bench
OURS=$PWD/target/release/postmap
THEIRS=/usr/sbin/postmap

work=$(mktemp -d /tmp/facteur-bench-tables.XXXXXX)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/etc" "$work/pf" "$work/us"
: > "$work/etc/main.cf"

echo "generating $N entries..."
awk -v n="$N" 'BEGIN { for (i = 0; i < n; i++)
  printf "user%d@example%d.com\tsmtp:[relay%d.example.net]:25\n", i, i % 1000, i % 97 }' > "$work/pf/src"
cp "$work/pf/src" "$work/us/src"
awk -v n="$N" 'BEGIN { srand(42); for (i = 0; i < n; i++) {
  k = int(rand() * n); if (rand() < 0.1) printf "absent%d@example.com\n", k;
  else printf "user%d@example%d.com\n", k, k % 1000 } }' > "$work/keys"
ls -l "$work/pf/src" | awk '{ printf "source: %d bytes\n", $5 }'

# measure LABEL DIR CMD...: prints "seconds maxrss_kb"
measure() {
  local dir=$1; shift
  ( cd "$dir" && /usr/bin/time -f "%e %M" -o "$work/time.out" "$@" ) >/dev/null
  cat "$work/time.out"
}

sync
read -r pf_build pf_build_rss < <(measure "$work/pf" "$THEIRS" -c "$work/etc" hash:src)
read -r us_build us_build_rss < <(measure "$work/us" "$OURS" -c "$work/etc" hash:src)
read -r pf_q pf_q_rss < <(measure "$work/pf" sh -c "$THEIRS -c $work/etc -q - hash:src < $work/keys")
read -r us_q us_q_rss < <(measure "$work/us" sh -c "$OURS -c $work/etc -q - hash:src < $work/keys")
# Both must answer the same.
(cd "$work/pf" && "$THEIRS" -c "$work/etc" -q - hash:src < "$work/keys" | md5sum) > "$work/pf.sum"
(cd "$work/us" && "$OURS" -c "$work/etc" -q - hash:src < "$work/keys" | md5sum) > "$work/us.sum"
same=$(cmp -s "$work/pf.sum" "$work/us.sum" && echo "identical" || echo "DIFFERENT")

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.1fx", a / b; else print "inf" }'; }
printf '\n%-28s %12s %12s %10s\n' "" "Postfix 3.7" "Facteur" "speed-up"
printf '%-28s %11ss %11ss %10s\n' "build hash: ($N entries)" "$pf_build" "$us_build" "$(ratio "$pf_build" "$us_build")"
printf '%-28s %10s MB %9s MB\n' "  peak RSS" "$((pf_build_rss / 1024))" "$((us_build_rss / 1024))"
printf '%-28s %11ss %11ss %10s\n' "postmap -q - ($N keys)" "$pf_q" "$us_q" "$(ratio "$pf_q" "$us_q")"
printf '%-28s %10s MB %9s MB\n' "  peak RSS" "$((pf_q_rss / 1024))" "$((us_q_rss / 1024))"
echo "query output: $same"
ls -l "$work/pf/src.db" "$work/us/src.db" | awk '{ printf "%-28s %d bytes\n", $9, $5 }' | sed "s|$work/||"

echo
./target/release/examples/table_lookup_bench "$N"
