#!/usr/bin/env bash
# Benchmark: outbound delivery, Facteur against Postfix, on this machine, in
# one run.
#
#   scripts/bench-relay.sh [RELAY_MESSAGES] [LMTP_MESSAGES] [SESSIONS] [relay|lmtp|both]
#                              (default 20000, 10000, 8, both)
#
# relay: Postfix's smtp-source sends RELAY_MESSAGES messages of 4 KiB
#   (-l 4096) over SESSIONS parallel sessions to the MTA's smtpd on a
#   loopback port; the MTA relays them with its smtp client
#   (relayhost = [127.0.0.1]:SINKPORT) to Postfix's smtp-sink. Timed from
#   the first submission until smtp-sink has received the last message
#   (smtp-sink -c counts each final dot; the script reads its last counter).
# lmtp: the same submission of LMTP_MESSAGES messages to alice@example.test,
#   with virtual_mailbox_domains = example.test and
#   virtual_transport = lmtp:unix:<socket> of a fresh Dovecot
#   (../shared/fixtures/dovecot), timed until every file is in alice's
#   Maildir/new.
#
# Each system gets a private instance under /tmp with the same main.cf
# settings (and chroot off in Postfix's master.cf, as Facteur has none).
# Printed per mode and system: messages per second end to end and the peak
# resident memory of the MTA (the sum over master and its children,
# sampled every 100 ms), the CPU time per message of the MTA (and of
# Dovecot, for lmtp), then the Facteur/Postfix ratios. A side whose
# delivery agent is not built (Facteur before its smtp/lmtp agents) is
# reported as skipped.
#
# Environment: SYSTEMS="postfix facteur" (the default) or one of them;
# STALL_SECS (default 60): give up on a run when no message arrived for
# that long; NO_BUILD=1: use target/release as it is. Each system
# starts at least SETTLE_SECS (61) after the last run ended, caches dropped
# (bench-lib.sh settle_fs; SETTLE=0 skips that). Needs root (Postfix's master), postfix (smtp-source,
# smtp-sink), and for lmtp Dovecot (dovecot-core, dovecot-lmtpd).
set -euo pipefail
cd "$(dirname "$0")/.."
top=$PWD
. scripts/bench-lib.sh
RN=${1:-20000}
LN=${2:-10000}
S=${3:-8}
MODES=${4:-both}
SYSTEMS=${SYSTEMS:-postfix facteur}
STALL_SECS=${STALL_SECS:-60}
case "$MODES" in relay|lmtp) ;; both) MODES="relay lmtp" ;; *) echo "bench-relay: mode is relay, lmtp or both" >&2; exit 2 ;; esac
need_root bench-relay
need_postfix bench-relay
for p in smtp-source smtp-sink; do
  [ -x /usr/sbin/$p ] || { echo "bench-relay: /usr/sbin/$p is needed (package postfix)" >&2; exit 1; }
done
fixture=$top/../shared/fixtures/dovecot/dovecot-fixture.sh
case " $MODES " in *" lmtp "*)
  [ -f "$fixture" ] || { echo "bench-relay: $fixture is missing (the shared/ directory beside the repository)" >&2; exit 1; }
  [ -x /usr/sbin/dovecot ] && [ -x /usr/lib/dovecot/lmtp ] || { echo "bench-relay: Dovecot is needed (apt-get install dovecot-core dovecot-lmtpd)" >&2; exit 1; }
esac

bin=${FACTEUR_BIN:-$top/target/release}
case " $SYSTEMS " in *" facteur "*)
  build_facteur "$bin"
esac

work=$(mktemp -d /tmp/bench-relay.XXXXXX)
chmod 755 "$work"
pids=()           # background processes we started (killed by PID)
postfixes=()      # Postfix config dirs to stop
dovecots=()       # Dovecot fixture dirs to stop
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for c in "${postfixes[@]}"; do /usr/sbin/postfix -c "$c" stop >/dev/null 2>&1 || true; done
  for d in "${dovecots[@]}"; do sh "$fixture" stop "$d" >/dev/null 2>&1 || true; done
  rm -rf "$work"
  # (Removing the runs' files counts as a run for settle_fs.)
  settled
}
trap cleanup EXIT
trap "exit 130" INT TERM

# submit COUNT PORT RCPT: smtp-source, SESSIONS sessions, 4 KiB messages.
submit() {
  /usr/sbin/smtp-source -s "$S" -m "$1" -l 4096 -f bench@example.org -t "$3" "127.0.0.1:$2" \
    > "$work/smtp-source.out" 2>&1 || { echo "   smtp-source failed:" >&2; tail -5 "$work/smtp-source.out" >&2; }
}

# report MODE SYSTEM GOT START END RSSFILE
report() {
  local secs rate peak
  secs=$(elapsed "$4" "$5")
  rate=$(echo "$3 / $secs" | bc -l)
  peak=$(peak_rss "$6")
  printf '%-6s %-8s %6d delivered in %7.2f s  %8.1f msg/s  peak RSS %7d KiB\n' \
    "$1" "$2" "$3" "$secs" "$rate" "${peak:-0}"
  echo "$1 $2 $rate ${peak:-0}" >> "$work/results"
}

# per_msg WHO PID CPU0 COUNT: CPU-milliseconds per message that PID's
# tree (exited children included) spent since tree_cpu gave CPU0.
per_msg() {
  local c1
  c1=$(tree_cpu "$2")
  [ "${4:-0}" -gt 0 ] || return 0
  printf '       %s: %.2f CPU-ms/msg\n' "$1" "$(echo "($c1 - $3) * 1000 / $4" | bc -l)"
}

# run_relay SYSTEM
run_relay() {
  local sys=$1 d=$work/relay-$sys sport spid
  mkdir -p "$d"
  if [ "$sys" = facteur ] && [ ! -x "$bin/smtp" ]; then
    echo "relay  facteur  skipped: $bin/smtp is not built (Facteur has no smtp agent yet)"
    return
  fi
  sport=$(free_port)
  /usr/sbin/smtp-sink -c -u nobody "127.0.0.1:$sport" 256 > "$d/sink.out" 2>&1 &
  spid=$!; pids+=("$spid")
  wait_listening "$sport"
  local extra="relayhost = [127.0.0.1]:$sport"
  "start_$sys" "$d" "$extra"
  wait_listening "$mta_port"
  rss_sampler "$mta_pid" "$d/rss"; pids+=("$rss_pid")
  local start end got c0
  c0=$(tree_cpu "$mta_pid")
  start=$(date +%s.%N)
  submit "$RN" "$mta_port" "user@relay.example.net"
  echo "       submitted in $(elapsed "$start" "$(date +%s.%N)") s"
  wait_count "relay $sys" "sink_count $d/sink.out" "$RN" || true
  end=$(date +%s.%N)
  got=$(sink_count "$d/sink.out"); got=${got:-0}
  kill "$rss_pid" 2>/dev/null || true; wait "$rss_pid" 2>/dev/null || true
  report relay "$sys" "$got" "$start" "$end" "$d/rss"
  echo "       cpu: $(cpu_breakdown "$mta_pid")"
  per_msg "$sys" "$mta_pid" "$c0" "$got"
  if [ "$sys" = postfix ]; then stop_postfix "$d" "$mta_pid"; else stop_facteur "$mta_pid"; fi
  kill "$spid" 2>/dev/null || true; wait "$spid" 2>/dev/null || true
}

# run_lmtp SYSTEM
run_lmtp() {
  local sys=$1 d=$work/lmtp-$sys dv
  mkdir -p "$d"
  if [ "$sys" = facteur ] && [ ! -x "$bin/lmtp" ]; then
    echo "lmtp   facteur  skipped: $bin/lmtp is not built (Facteur has no lmtp agent yet)"
    return
  fi
  dv=$d/dovecot
  mkdir -p "$dv"
  # The fixture's output goes to a file: the daemonized Dovecot keeps the
  # script's stdout open, so a pipe would never reach its end.
  sh "$fixture" start "$dv" > "$d/dovecot.env" 2>&1 || { cat "$d/dovecot.env" >&2; exit 1; }
  dovecots+=("$dv")
  local sock root
  sock=$(sed -n 's/^DOVECOT_LMTP_SOCKET=//p' "$d/dovecot.env")
  root=$(sed -n 's/^DOVECOT_MAIL_ROOT=//p' "$d/dovecot.env")
  local extra="virtual_mailbox_domains = example.test
virtual_transport = lmtp:unix:$sock"
  "start_$sys" "$d" "$extra"
  wait_listening "$mta_port"
  rss_sampler "$mta_pid" "$d/rss"; pids+=("$rss_pid")
  local box=$root/alice@example.test/Maildir start end got c0 dpid d0
  dpid=$(cat "$dv/run/master.pid")
  c0=$(tree_cpu "$mta_pid"); d0=$(tree_cpu "$dpid")
  start=$(date +%s.%N)
  submit "$LN" "$mta_port" "alice@example.test"
  wait_count "lmtp $sys" "maildir_count $box" "$LN" || true
  end=$(date +%s.%N)
  got=$(maildir_count "$box")
  kill "$rss_pid" 2>/dev/null || true; wait "$rss_pid" 2>/dev/null || true
  report lmtp "$sys" "$got" "$start" "$end" "$d/rss"
  echo "       cpu: $(cpu_breakdown "$mta_pid")"
  per_msg "$sys" "$mta_pid" "$c0" "$got"
  per_msg Dovecot "$dpid" "$d0" "$got"
  if [ "$sys" = postfix ]; then stop_postfix "$d" "$mta_pid"; else stop_facteur "$mta_pid"; fi
  sh "$fixture" stop "$dv" >/dev/null 2>&1 || true
}

: > "$work/results"
for mode in $MODES; do
  case $mode in
    relay) echo "== relay: $RN messages, $S sessions, smtpd -> smtp -> smtp-sink" ;;
    lmtp) echo "== lmtp: $LN messages, $S sessions, smtpd -> lmtp -> Dovecot (unix socket)" ;;
  esac
  for sys in $SYSTEMS; do "run_$mode" "$sys"; done
done

echo "== ratios (Facteur / Postfix)"
awk '
  { rate[$1 " " $2] = $3; mem[$1 " " $2] = $4; modes[$1] = 1 }
  END {
    for (m in modes) {
      p = m " postfix"; f = m " facteur"
      if ((p in rate) && (f in rate) && rate[p] > 0)
        printf "%-6s throughput %.2fx  peak memory %.2fx\n", m, rate[f] / rate[p], mem[f] / (mem[p] + 1e-9)
      else
        printf "%-6s n/a (both systems are needed)\n", m
    }
  }' "$work/results"
