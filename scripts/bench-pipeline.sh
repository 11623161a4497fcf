#!/usr/bin/env bash
# Benchmark: local submission to Maildir delivery, Facteur against Postfix,
# on this machine, in one run.
#
#   scripts/bench-pipeline.sh [MESSAGES] [PARALLEL] [sendmail|smtp]
#                                    (default 10000, 4, sendmail)
#
# With `smtp`, the messages come over SMTP instead: Postfix's smtp-source
# with PARALLEL sessions (-s) and 4 KiB messages (-l 4096) to each
# system's smtpd on a loopback port; everything else is the same.
#
# For each system: a private instance under /tmp (its own config, queue and
# spool), MESSAGES messages of about 4 KiB submitted with that system's
# sendmail by PARALLEL submitters, timed from the first submission until
# the last message is in the Maildir. Printed per system: messages per
# second end to end, fsync+fdatasync calls per message (strace -f -c over
# the daemons and the submitters, measured on a separate, smaller run so
# that tracing does not slow the timed one), and the peak resident memory
# of the daemons (the sum over the process tree, sampled every 100 ms).
# Then the ratios. Needs root (Postfix's master runs as root; Facteur then runs as
# root too, delivering as the recipient), strace, and postfix installed.
# NO_BUILD=1: use target/release as it is. Each system
# starts at least SETTLE_SECS (61) after the last run ended, caches dropped
# (bench-lib.sh settle_fs; SETTLE=0 skips that). SYSTEMS="postfix facteur" (the
# default) or one of them.
set -euo pipefail
cd "$(dirname "$0")/.."
top=$PWD
N=${1:-10000}
P=${2:-4}
MODE=${3:-sendmail}
SYSTEMS=${SYSTEMS:-postfix facteur}
case "$MODE" in sendmail|smtp) ;; *) echo "bench-pipeline: mode is sendmail or smtp" >&2; exit 2 ;; esac
[ "$MODE" = sendmail ] || [ -x /usr/sbin/smtp-source ] || { echo "bench-pipeline: smtp-source is needed (package postfix)" >&2; exit 1; }
. scripts/bench-lib.sh
need_root bench-pipeline
command -v strace >/dev/null || { echo "bench-pipeline: strace is needed (apt-get install strace)" >&2; exit 1; }
need_postfix bench-pipeline

bin=${FACTEUR_BIN:-$top/target/release}
build_facteur "$bin"

user=fbench
id "$user" >/dev/null 2>&1 || useradd -M -d /nonexistent -s /usr/sbin/nologin "$user"

work=$(mktemp -d /tmp/bench-pipeline.XXXXXX)
chmod 755 "$work"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  [ -n "${fapid:-}" ] && kill "$fapid" 2>/dev/null || true
  /usr/sbin/postfix -c "$work/postfix/etc" stop >/dev/null 2>&1 || true
  rm -rf "$work"
  # (Removing the runs' files counts as a run for settle_fs.)
  settled
}
trap cleanup EXIT
trap "exit 130" INT TERM

# A 4 KiB message.
body=$(head -c 3000 /dev/zero | tr '\0' 'x' | fold -w 72)
printf 'Subject: benchmark\nFrom: bench@example.test\nTo: %s\n\n%s\n' "$user" "$body" > "$work/msg"

# submit COUNT SUBMIT [strace output]: COUNT messages by P submitters.
# SUBMIT is a sendmail command line, or smtp:PORT (smtp-source).
submit() {
  local count=$1 sendmail=$2 trace=${3:-}
  local per=$(( (count + P - 1) / P ))
  local cmd=(xargs -P "$P" -n "$per" sh -c 'for i; do '"$sendmail"' < '"$work/msg"' || exit 1; done' sh)
  if [ "${sendmail%%:*}" = smtp ]; then
    cmd=(/usr/sbin/smtp-source -s "$P" -m "$count" -l 4096 -f bench@example.test
         -t "$user@bench.example.test" "127.0.0.1:${sendmail#smtp:}")
    if [ -n "$trace" ]; then
      strace -f -c -e trace=fsync,fdatasync -o "$trace" "${cmd[@]}" >/dev/null 2>&1 || true
    else
      "${cmd[@]}" >/dev/null 2>&1 || true
    fi
    return
  fi
  if [ -n "$trace" ]; then
    seq "$count" | strace -f -c -e trace=fsync,fdatasync -o "$trace" "${cmd[@]}" >/dev/null 2>&1 || true
  else
    seq "$count" | "${cmd[@]}" >/dev/null 2>&1 || true
  fi
}

# wait_delivered MAILDIR COUNT: until COUNT messages are in MAILDIR/new
# (bench-lib's wait_count: a cheap count every 0.1 s, as a count that
# stats or walks 20,000 files at a high rate takes CPU from the MTA).
STALL_SECS=${STALL_SECS:-60}
wait_delivered() {
  wait_count "deliveries" "maildir_count $1" "$2"
}

# run NAME MASTER_PID SENDMAIL_CMD MAILDIR
#   1. timed: N messages, no tracing; peak RSS of the daemons sampled.
#   2. counted: N/10 more messages (at least 100) under strace -f -c
#      (daemons and submitters), for fsyncs per message.
run() {
  local name=$1 mpid=$2 sendmail=$3 maildir=$4
  rss_sampler "$mpid" "$work/$name.rss"
  local rpid=$rss_pid; pids+=("$rpid")
  local start end
  start=$(date +%s.%N)
  submit "$N" "$sendmail"
  echo "          submitted in $(elapsed "$start" "$(date +%s.%N)") s"
  wait_delivered "$maildir" "$N" || true
  end=$(date +%s.%N)
  local got secs rate
  got=$(maildir_count "$maildir")
  secs=$(elapsed "$start" "$end")
  rate=$(echo "$got / $secs" | bc -l)
  kill "$rpid" 2>/dev/null || true; wait "$rpid" 2>/dev/null || true
  local peak
  peak=$(peak_rss "$work/$name.rss")

  local M=$(( N / 10 < 100 ? 100 : N / 10 ))
  local trace=$work/$name.strace
  # Attach to master and every daemon already running (-f follows the
  # processes they start later).
  local attach=(-p "$mpid")
  for p in $(ps -o pid= --ppid "$mpid"); do attach+=(-p "$p"); done
  strace -f -c -e trace=fsync,fdatasync -o "$trace.daemons" "${attach[@]}" 2>/dev/null &
  local spid=$!; pids+=("$spid")
  sleep 1
  submit "$M" "$sendmail" "$trace.submit"
  wait_delivered "$maildir" $((N + M)) || true
  sleep 0.5
  kill -INT "$spid" 2>/dev/null || true; wait "$spid" 2>/dev/null || true
  local fs
  fs=$(cat "$trace".* 2>/dev/null | awk '$NF=="fsync"||$NF=="fdatasync" {s+=$4} END {print s+0}')
  local per_msg
  per_msg=$(echo "$fs / $M" | bc -l)
  printf '%-8s %6d delivered in %6.2f s  %8.1f msg/s  %5.2f fsyncs/msg  peak RSS %6d KiB\n' \
    "$name" "$got" "$secs" "$rate" "$per_msg" "${peak:-0}"
  echo "$name $rate $per_msg ${peak:-0}" >> "$work/results"
}

: > "$work/results"
case " $SYSTEMS " in *" postfix "*)
echo "== Postfix instance"
pf=$work/postfix
mkdir -p "$pf/etc" "$pf/data" "$pf/mail"
cp /etc/postfix/master.cf "$pf/etc/master.cf"
# No SMTP listener on port 25 for the benchmark; in smtp mode, one on a
# free loopback port (not chrooted: the instance lives under /tmp).
sed -i 's/^smtp\( *\)inet/#smtp\1inet/' "$pf/etc/master.cf"
pf_submit="/usr/sbin/sendmail -C $pf/etc -f bench@example.test $user"
if [ "$MODE" = smtp ]; then
  pport=$(free_port)
  echo "127.0.0.1:$pport inet n - n - - smtpd" >> "$pf/etc/master.cf"
  pf_submit="smtp:$pport"
fi
cat > "$pf/etc/main.cf" <<CF
compatibility_level = 3.6
queue_directory = $pf/queue
data_directory = $pf/data
myhostname = bench.example.test
mydestination = \$myhostname, localhost
inet_interfaces = loopback-only
inet_protocols = ipv4
mail_spool_directory = $pf/mail/
alias_maps =
alias_database =
local_recipient_maps =
maillog_file = $pf/maillog
maillog_file_prefixes = /var, /dev/stdout, /tmp
CF
mkdir -p "$pf/queue"
chown "$user" "$pf/mail"
chown postfix "$pf/data"
/usr/sbin/postfix -c "$pf/etc" check >/dev/null 2>&1 || true
settle_fs
/usr/sbin/postfix -c "$pf/etc" start >/dev/null 2>&1
pfpid=$(head -1 "$pf/queue/pid/master.pid" | tr -d ' ')
run postfix "$pfpid" "$pf_submit" "$pf/mail/$user"
/usr/sbin/postfix -c "$pf/etc" stop >/dev/null 2>&1 || true
settled
;; esac

case " $SYSTEMS " in *" facteur "*)
echo "== Facteur instance"
fa=$work/facteur
mkdir -p "$fa/etc" "$fa/data" "$fa/mail"
cp conf/master.cf "$fa/etc/master.cf"
fa_submit="$bin/sendmail -C $fa/etc -f bench@example.test $user"
if [ "$MODE" = smtp ]; then
  fport=$(free_port)
  sed -i "s/^127.0.0.1:10025 /127.0.0.1:$fport /" "$fa/etc/master.cf"
  fa_submit="smtp:$fport"
fi
cat > "$fa/etc/main.cf" <<CF
compatibility_level = 3.6
queue_directory = $fa/queue
data_directory = $fa/data
daemon_directory = $bin
mail_owner = postfix
setgid_group = postdrop
myhostname = bench.example.test
mydestination = \$myhostname, localhost
inet_interfaces = loopback-only
inet_protocols = ipv4
mail_spool_directory = $fa/mail/
alias_maps =
alias_database =
local_recipient_maps =
maillog_file = $fa/maillog
maillog_file_prefixes = /var, /dev/stdout, /tmp
CF
chown "$user" "$fa/mail"
chown postfix "$fa/data"
"$bin/facteur" -c "$fa/etc" set-permissions >/dev/null
settle_fs
"$bin/master" -d -c "$fa/etc" >/dev/null 2>&1 &
fapid=$!; pids+=("$fapid")
for _ in $(seq 200); do [ -S "$fa/queue/public/pickup" ] && break; sleep 0.05; done
run facteur "$fapid" "$fa_submit" "$fa/mail/$user"
kill "$fapid" 2>/dev/null || true; wait "$fapid" 2>/dev/null || true
settled
;; esac

[ "$(wc -l < "$work/results")" -ge 2 ] || exit 0
echo "== ratios (Facteur / Postfix)"
awk '
  $1=="postfix" {prate=$2; pfs=$3; pmem=$4}
  $1=="facteur" {frate=$2; ffs=$3; fmem=$4}
  END {
    printf "throughput  %.2fx\n", frate/prate
    printf "fsyncs/msg  %.2fx\n", ffs/(pfs+1e-9)
    printf "peak memory %.2fx\n", fmem/(pmem+1e-9)
  }' "$work/results"
