#!/usr/bin/env bash
# Benchmark: the SMTP server's intake, Facteur against Postfix, on this
# machine, in one run.
#
#   scripts/bench-smtpd.sh [MESSAGES] [IDLE]      (default 20000, 1000)
#
# Postfix's smtp-source sends messages to each system's smtpd on a
# loopback port; every message is accepted only once its queue file is
# fsynced, by both systems. Scenarios (SCENARIOS="s20 s1 big maildir idle"
# by default, any subset in any order):
#   s20      MESSAGES messages of 4 KiB over 20 sessions, discard delivery
#            (default_transport = discard)
#   s1       MESSAGES/10 messages of 4 KiB over 1 session, discard delivery
#   big      MESSAGES/10 messages of 100 KiB over 20 sessions, discard
#   maildir  MESSAGES/2 messages of 4 KiB over 20 sessions, local delivery
#            to a Maildir (mail_spool_directory ending in /)
#   idle     IDLE connections opened and held after the greeting: the
#            resident memory of the MTA with them (both get
#            default_process_limit = IDLE + 100: Postfix runs a process per
#            connection; Facteur's smtpd takes that many connections)
# Printed per scenario and system: messages per second accepted (from the
# first connection until smtp-source has its last 250), the time until the
# queue is empty again, CPU milliseconds per message of the whole MTA over
# the run until the queue is empty (every daemon, those that exited too),
# fsync+fdatasync calls per message (strace -f -c over the daemons, on a
# separate run of a tenth of the messages so tracing does not slow the
# timed one), peak resident memory summed over the MTA's processes
# (sampled every 100 ms); then the Facteur/Postfix ratios.
#
# Environment: SCENARIOS, SYSTEMS="postfix facteur" (the default) or one
# of them, NO_BUILD=1 (use target/release as it is), STALL_SECS (default
# 60: give up waiting when nothing moved for that long), SETTLE_SECS
# (default 61: each system starts that long after the last run ended,
# caches dropped; bench-lib.sh settle_fs; SETTLE=0 skips it). Needs root
# (Postfix's master), postfix (smtp-source), strace, python3.
set -euo pipefail
cd "$(dirname "$0")/.."
top=$PWD
. scripts/bench-lib.sh
N=${1:-20000}
IDLE=${2:-1000}
SCENARIOS=${SCENARIOS:-s20 s1 big maildir idle}
SYSTEMS=${SYSTEMS:-postfix facteur}
STALL_SECS=${STALL_SECS:-60}
need_root bench-smtpd
need_postfix bench-smtpd
[ -x /usr/sbin/smtp-source ] || { echo "bench-smtpd: /usr/sbin/smtp-source is needed (package postfix)" >&2; exit 1; }
command -v strace >/dev/null || { echo "bench-smtpd: strace is needed (apt-get install strace)" >&2; exit 1; }
for s in $SCENARIOS; do
  case $s in s20|s1|big|maildir|idle) ;; *) echo "bench-smtpd: unknown scenario $s (s20 s1 big maildir idle)" >&2; exit 2 ;; esac
done

bin=${FACTEUR_BIN:-$top/target/release}
case " $SYSTEMS " in *" facteur "*)
  build_facteur "$bin"
esac

user=fbench
id "$user" >/dev/null 2>&1 || useradd -M -d /nonexistent -s /usr/sbin/nologin "$user"

work=$(mktemp -d /tmp/bench-smtpd.XXXXXX)
chmod 755 "$work"
pids=()
postfixes=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for c in "${postfixes[@]}"; do /usr/sbin/postfix -c "$c" stop >/dev/null 2>&1 || true; done
  rm -rf "$work"
  # (Removing the runs' files counts as a run for settle_fs.)
  settled
}
trap cleanup EXIT
trap "exit 130" INT TERM

# queue_count DIR: messages still in the instance's incoming, active and
# deferred queues (both systems hash or not the same way: count files).
# Only complete files count: both systems set the owner-execute bit
# when a file is finished. One without it is being written, and
# Facteur's cleanup also makes the next message's file ahead on a
# connection smtpd keeps (it stays empty until a message comes).
queue_count() { find "$1/queue/incoming" "$1/queue/active" "$1/queue/deferred" -type f -perm -u+x 2>/dev/null | wc -l; }

# smtp_source SESSIONS COUNT SIZE PORT RCPT
smtp_source() {
  /usr/sbin/smtp-source -s "$1" -m "$2" -l "$3" -f bench@example.org -t "$5" "127.0.0.1:$4" \
    > "$work/smtp-source.out" 2>&1 || { echo "   smtp-source failed:" >&2; tail -5 "$work/smtp-source.out" >&2; }
}

# The main.cf lines of a scenario (after the common ones) and its recipient.
scenario_cf() {
  case $1 in
    maildir) printf 'mydestination = $myhostname\nmail_spool_directory = %s/mail/\n' "$2" ;;
    idle) echo "default_transport = discard"
          echo "default_process_limit = $((IDLE + 100))" ;;
    *) echo "default_transport = discard" ;;
  esac
}
scenario_rcpt() { [ "$1" = maildir ] && echo "$user@mta.bench.test" || echo "user@sink.example.net"; }

# run_messages SCENARIO SYSTEM SESSIONS COUNT SIZE
run_messages() {
  local sc=$1 sys=$2 s=$3 n=$4 size=$5 d=$work/$1-$2
  mkdir -p "$d/mail"; chown "$user" "$d/mail"
  "start_$sys" "$d" "$(scenario_cf "$sc" "$d" "$sys")"
  wait_listening "$mta_port"
  local rcpt; rcpt=$(scenario_rcpt "$sc")
  # Warm up: one message, so that both systems have their daemons running.
  smtp_source 1 1 "$size" "$mta_port" "$rcpt"
  wait_count "$sc $sys warm-up" "echo \$(( 1 - \$(queue_count $d) ))" 1 || true
  rss_sampler "$mta_pid" "$d/rss"; pids+=("$rss_pid")
  local cpu0 cpu1 start accepted drained
  cpu0=$(tree_cpu "$mta_pid")
  start=$(date +%s.%N)
  smtp_source "$s" "$n" "$size" "$mta_port" "$rcpt"
  accepted=$(date +%s.%N)
  wait_count "$sc $sys drain" "echo \$(( $n - \$(queue_count $d) ))" "$n" || true
  drained=$(date +%s.%N)
  cpu1=$(tree_cpu "$mta_pid")
  kill "$rss_pid" 2>/dev/null || true; wait "$rss_pid" 2>/dev/null || true
  # fsyncs per message, on a smaller traced run.
  local m=$(( n / 10 < 100 ? 100 : n / 10 ))
  count_fsyncs "$d/strace" "$mta_pid"; pids+=("$strace_pid")
  smtp_source "$s" "$m" "$size" "$mta_port" "$rcpt"
  wait_count "$sc $sys traced drain" "echo \$(( $m - \$(queue_count $d) ))" "$m" || true
  kill -INT "$strace_pid" 2>/dev/null || true; wait "$strace_pid" 2>/dev/null || true
  if [ "$sys" = postfix ]; then stop_postfix "$d" "$mta_pid"; else stop_facteur "$mta_pid"; fi

  local secs rate drain cpums fs peak
  secs=$(elapsed "$start" "$accepted")
  rate=$(echo "$n / $secs" | bc -l)
  drain=$(elapsed "$start" "$drained")
  cpums=$(echo "($cpu1 - $cpu0) * 1000 / $n" | bc -l)
  fs=$(echo "$(fsyncs_in "$d/strace") / $m" | bc -l)
  peak=$(peak_rss "$d/rss")
  printf '%-7s %-8s %6d in %7.2f s  %8.1f msg/s  queue empty at %7.2f s  %5.2f CPU-ms/msg  %4.2f fsyncs/msg  peak RSS %7d KiB\n' \
    "$sc" "$sys" "$n" "$secs" "$rate" "$drain" "$cpums" "$fs" "${peak:-0}"
  echo "$sc $sys $rate ${peak:-0} $cpums" >> "$work/results"
}

# run_idle SYSTEM: IDLE connections, each past its greeting, held open.
run_idle() {
  local sys=$1 d=$work/idle-$1
  mkdir -p "$d"
  "start_$sys" "$d" "$(scenario_cf idle "$d" "$sys")"
  wait_listening "$mta_port"
  local before; before=$(tree_rss "$mta_pid")
  mkfifo "$d/hold"
  cat > "$d/idle.py" <<'PY'
import socket, sys
port, n = int(sys.argv[1]), int(sys.argv[2])
socks = []
for _ in range(n):
    s = socket.create_connection(("127.0.0.1", port), timeout=60)
    socks.append(s)
greeted = 0
for s in socks:
    try:
        if s.recv(512).startswith(b"220"):
            greeted += 1
    except OSError:
        pass
print(greeted, flush=True)
sys.stdin.read()  # hold them until the script closes the fifo
PY
  python3 "$d/idle.py" "$mta_port" "$IDLE" > "$d/idle.out" 2>&1 < "$d/hold" &
  local hpid=$!; pids+=("$hpid")
  exec 9> "$d/hold"
  local i
  for i in $(seq 1200); do [ -s "$d/idle.out" ] && break; sleep 0.1; done
  local greeted rss
  greeted=$(head -1 "$d/idle.out")
  case $greeted in *[!0-9]*|"") echo "   idle $sys: the client failed:" >&2; cat "$d/idle.out" >&2; greeted=0 ;; esac
  sleep 1   # let the processes settle after the last greeting
  rss=$(tree_rss "$mta_pid")
  exec 9>&-
  wait "$hpid" 2>/dev/null || true
  if [ "$sys" = postfix ]; then stop_postfix "$d" "$mta_pid"; else stop_facteur "$mta_pid"; fi
  printf '%-7s %-8s %6s of %d connections greeted and held: RSS %7d KiB (%d KiB before them)\n' \
    idle "$sys" "$greeted" "$IDLE" "$rss" "$before"
  echo "idle $sys 0 $rss 0" >> "$work/results"
}

: > "$work/results"
for sc in $SCENARIOS; do
  case $sc in
    s20) echo "== s20: $N messages of 4 KiB, 20 sessions, discard" ;;
    s1) echo "== s1: $((N / 10)) messages of 4 KiB, 1 session, discard" ;;
    big) echo "== big: $((N / 10)) messages of 100 KiB, 20 sessions, discard" ;;
    maildir) echo "== maildir: $((N / 2)) messages of 4 KiB, 20 sessions, local delivery to Maildir" ;;
    idle) echo "== idle: $IDLE connections held open" ;;
  esac
  for sys in $SYSTEMS; do
    case $sc in
      s20) run_messages s20 "$sys" 20 "$N" 4096 ;;
      s1) run_messages s1 "$sys" 1 $((N / 10)) 4096 ;;
      big) run_messages big "$sys" 20 $((N / 10)) 102400 ;;
      maildir) run_messages maildir "$sys" 20 $((N / 2)) 4096 ;;
      idle) run_idle "$sys" ;;
    esac
  done
done

echo "== ratios (Facteur / Postfix)"
awk '
  { rate[$1 " " $2] = $3; mem[$1 " " $2] = $4; cpu[$1 " " $2] = $5; if (!($1 in seen)) { seen[$1] = 1; order[++n] = $1 } }
  END {
    for (i = 1; i <= n; i++) {
      m = order[i]; p = m " postfix"; f = m " facteur"
      if (!((p in mem) && (f in mem))) { printf "%-7s n/a (both systems are needed)\n", m; continue }
      if (m == "idle") { printf "%-7s memory %.2fx\n", m, mem[f] / (mem[p] + 1e-9); continue }
      printf "%-7s accepted %.2fx  CPU per message %.2fx  peak memory %.2fx\n", m,
        rate[f] / (rate[p] + 1e-9), cpu[f] / (cpu[p] + 1e-9), mem[f] / (mem[p] + 1e-9)
    }
  }' "$work/results"
