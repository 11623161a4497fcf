# Shell functions shared by the benchmark scripts (bench-pipeline.sh,
# bench-relay.sh, bench-smtpd.sh). Source it; it defines functions only.

# A TCP port free on 127.0.0.1 now (the kernel's choice).
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Sum of VmRSS (KiB) of a process and its children (the daemons of an MTA
# are children of its master). Bash builtins only: the sampler runs ten
# times a second on a two-core machine and must not steal the CPU it
# measures.
tree_rss() {
  local root=$1 total=0 p k v rest f kids=() more=()
  for f in /proc/"$root"/task/*/children; do
    [ -r "$f" ] || continue
    # The file has no final newline: read fills the array and fails.
    read -r -a more < "$f" || true
    kids+=("${more[@]}")
  done
  for p in "$root" "${kids[@]}"; do
    [ -r "/proc/$p/status" ] || continue
    # A process may end between the test and the read: no noise then.
    { while read -r k v rest; do
        if [ "$k" = "VmRSS:" ]; then total=$((total + v)); break; fi
      done < "/proc/$p/status"; } 2>/dev/null || true
  done
  echo "$total"
}

# rss_sampler MASTER_PID FILE: samples tree_rss every 100 ms into FILE
# while MASTER_PID lives, in the background; its PID is in $rss_pid.
rss_sampler() {
  local mpid=$1 file=$2
  ( while kill -0 "$mpid" 2>/dev/null; do tree_rss "$mpid"; sleep 0.1; done ) > "$file" &
  rss_pid=$!
}

# peak_rss FILE: the largest sample in FILE (0 when none).
peak_rss() { sort -n "$1" 2>/dev/null | tail -1 | awk '{print $1+0}'; }

# build_facteur BIN: the release programs, built now unless NO_BUILD=1
# or FACTEUR_BIN names another directory of them (to compare two builds)
# (then BIN's programs are used as they are).
build_facteur() {
  if [ -n "${FACTEUR_BIN:-}" ]; then
    echo "== using the Facteur programs in $1 (FACTEUR_BIN)"
  elif [ "${NO_BUILD:-0}" = 1 ]; then
    echo "== using the Facteur programs already in $1 (NO_BUILD=1)"
  else
    echo "== building Facteur (release)"
    cargo build --release --quiet --workspace --bins
  fi
}

# need_root NAME: exits unless root (Postfix's master needs it).
need_root() {
  [ "$(id -u)" = 0 ] || { echo "$1: run as root (Postfix's master needs it)" >&2; exit 1; }
}

# need_postfix NAME: exits unless Postfix is installed.
need_postfix() {
  [ -x /usr/sbin/postfix ] || { echo "$1: postfix is needed (apt-get install postfix)" >&2; exit 1; }
}

# elapsed START END: END - START in seconds (date +%s.%N values).
elapsed() { echo "$2 - $1" | bc -l; }

# cpu_breakdown MASTER_PID: CPU seconds (user+system) of master and each
# of its children still alive, summed by program name, one line.
cpu_breakdown() {
  local root=$1 hz p
  hz=$(getconf CLK_TCK)
  for p in $root $(ps -o pid= --ppid "$root" 2>/dev/null); do
    [ -r "/proc/$p/stat" ] || continue
    # comm may hold spaces: cut after the closing parenthesis.
    sed -E 's/^[0-9]+ \((.*)\) (.*)$/\1 \2/' "/proc/$p/stat"
  done | awk -v hz="$hz" '{ cpu[$1] += ($13 + $14) / hz }
    END { for (c in cpu) printf "%s=%.2fs ", c, cpu[c]; print "" }'
}

# tree_cpu MASTER_PID: CPU seconds (user+system) used so far by MASTER_PID,
# its children that have exited and been reaped (cutime/cstime), and its
# children still alive. Take it before and after a run: the difference is
# what the MTA spent on that run, whatever processes came and went.
tree_cpu() {
  local root=$1 hz p
  hz=$(getconf CLK_TCK)
  for p in $root $(ps -o pid= --ppid "$root" 2>/dev/null); do
    [ -r "/proc/$p/stat" ] || continue
    sed -E 's/^[0-9]+ \((.*)\) (.*)$/\2/' "/proc/$p/stat" |
      awk -v self="$([ "$p" = "$root" ] && echo 1 || echo 0)" \
        '{ t = $12 + $13; if (self) t += $14 + $15; print t }'
  done | awk -v hz="$hz" '{ s += $1 } END { printf "%.3f\n", s / hz }'
}

# count_fsyncs OUT MASTER_PID: starts `strace -f -c` on MASTER_PID and
# every daemon it runs (following the processes they start later), writing
# its summary to OUT; the tracer's PID is in $strace_pid. Stop it with
# `kill -INT`, then `fsyncs_in OUT...` sums the fsync and fdatasync calls.
count_fsyncs() {
  local out=$1 mpid=$2 attach=(-p "$2") p
  for p in $(ps -o pid= --ppid "$mpid"); do attach+=(-p "$p"); done
  strace -f -c -e trace=fsync,fdatasync -o "$out" "${attach[@]}" 2>/dev/null &
  strace_pid=$!
  sleep 1   # strace attaches asynchronously
}
fsyncs_in() { cat "$@" 2>/dev/null | awk '$NF=="fsync"||$NF=="fdatasync" {s+=$4} END {print s+0}'; }

# ---- Private MTA instances, one per benchmark run ----------------------
# Extra main.cf lines for one system (experiments): the environment's
# FACTEUR_MAIN_CF and POSTFIX_MAIN_CF. These use the caller's globals: $work (scratch directory), $bin
# (Facteur's release programs), $top (the repository), $STALL_SECS, and
# the arrays pids (background PIDs to kill on exit) and postfixes (Postfix
# config directories to stop on exit).

# The main.cf settings both systems share; $1 is the instance directory,
# $2 the mode's extra lines.
common_main_cf() {
  cat <<CF
compatibility_level = 3.6
queue_directory = $1/queue
data_directory = $1/data
myhostname = mta.bench.test
mydomain = bench.test
myorigin = \$myhostname
mydestination =
inet_interfaces = loopback-only
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
alias_maps =
alias_database =
local_recipient_maps =
maillog_file = $1/maillog
maillog_file_prefixes = /var, /dev/stdout, /tmp
$2
CF
}

# wait_count WHAT COUNT_CMD N: until COUNT_CMD prints N or more; gives up
# when nothing new arrived for STALL_SECS (or after an hour).
wait_count() {
  local what=$1 cmd=$2 n=$3 last=-1 since=$SECONDS t0=$SECONDS got
  while :; do
    got=$(eval "$cmd")
    [ "${got:-0}" -ge "$n" ] && return 0
    if [ "${got:-0}" != "$last" ]; then last=${got:-0}; since=$SECONDS; fi
    if [ $((SECONDS - since)) -ge "$STALL_SECS" ] || [ $((SECONDS - t0)) -ge 3600 ]; then
      echo "   $what: $last of $n after $((SECONDS - t0)) s, nothing new for ${STALL_SECS}s: giving up" >&2
      return 1
    fi
    sleep 0.1
  done
}

# smtp-sink's message count: its last -c counter line (mesg=N).
sink_count() {
  local t
  t=$(tail -c 300 "$1" 2>/dev/null)
  [[ $t =~ .*mesg=([0-9]+) ]] && echo "${BASH_REMATCH[1]}"
}

# Files in a Maildir's new/.
maildir_count() { ls -f "$1/new" 2>/dev/null | grep -vc '^\.' || true; }

# settle_fs: lets each system start from the same file-system state,
# whatever ran before it: waits until SETTLE_SECS (default 61) have passed
# since the last MTA run of any benchmark ended, then writes back dirty
# data and drops the kernel's clean caches (root only; SETTLE=0 skips it
# all). It matters on a file system without a journal (this VM's root):
# ext4 then skips, at each file creation, every inode freed in the last
# 60 s (360 s while its inode-table block is dirty) and reads each one's
# table entry to find out. Without the pause the thousands of queue files
# the previous run removed made the next run's creations slower than its
# own (a third of cleanup's CPU in a Facteur lmtp run just after
# Postfix's); with it each run pays for its own removals only.
settle_stamp=/tmp/facteur-bench-last-run
settle_fs() {
  [ "${SETTLE:-1}" = 1 ] || return 0
  local last now wait
  last=$(cat "$settle_stamp" 2>/dev/null || echo 0)
  now=$(date +%s)
  wait=$((last + ${SETTLE_SECS:-61} - now))
  if [ "$wait" -gt 0 ] && [ "$wait" -le "${SETTLE_SECS:-61}" ]; then
    echo "       (waiting ${wait} s for the file system to forget the last run's files)"
    sleep "$wait"
  fi
  sync
  [ -w /proc/sys/vm/drop_caches ] && echo 3 > /proc/sys/vm/drop_caches
  return 0
}

# settled: notes that an MTA run ended now (see settle_fs).
settled() { date +%s > "$settle_stamp" 2>/dev/null || true; }

# start_postfix DIR EXTRA_MAIN_CF: a private Postfix with an smtpd on a
# free port; sets mta_pid and mta_port.
start_postfix() {
  local d=$1
  settle_fs
  mkdir -p "$d/etc" "$d/data" "$d/queue"
  mta_port=$(free_port)
  # Debian's master.cf, chroot off (sockets and the instance live in /tmp),
  # no smtpd on port 25, one on the benchmark's port.
  awk '/^[a-z0-9]/ && NF >= 8 { $5 = "n" } { print }' /etc/postfix/master.cf |
    sed 's/^smtp\( *\)inet/#smtp\1inet/' > "$d/etc/master.cf"
  echo "127.0.0.1:$mta_port inet n - n - - smtpd" >> "$d/etc/master.cf"
  { common_main_cf "$d" "$2"
    [ -n "${POSTFIX_MAIN_CF:-}" ] && printf '%s\n' "$POSTFIX_MAIN_CF"; } > "$d/etc/main.cf"
  chown postfix "$d/data"
  /usr/sbin/postfix -c "$d/etc" check >/dev/null 2>&1 || true
  /usr/sbin/postfix -c "$d/etc" start >/dev/null 2>&1 || { echo "postfix start failed:" >&2; cat "$d/maillog" >&2 2>/dev/null; exit 1; }
  postfixes+=("$d/etc")
  mta_pid=$(head -1 "$d/queue/pid/master.pid" | tr -d ' ')
}

stop_postfix() {
  /usr/sbin/postfix -c "$1/etc" stop >/dev/null 2>&1 || true
  local pid=$2 i
  settled
  for i in $(seq 200); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.05; done
  kill -9 "$pid" 2>/dev/null || true
}

# start_facteur DIR EXTRA_MAIN_CF: a private Facteur, the same settings;
# sets mta_pid and mta_port.
start_facteur() {
  local d=$1 i
  settle_fs
  mkdir -p "$d/etc" "$d/data"
  mta_port=$(free_port)
  sed "s/^127.0.0.1:10025 /127.0.0.1:$mta_port /" "$top/conf/master.cf" > "$d/etc/master.cf"
  { common_main_cf "$d" "$2"
    echo "daemon_directory = $bin"
    echo "mail_owner = postfix"
    echo "setgid_group = postdrop"
    [ -n "${FACTEUR_MAIN_CF:-}" ] && printf '%s\n' "$FACTEUR_MAIN_CF"; } > "$d/etc/main.cf"
  chown postfix "$d/data"
  "$bin/facteur" -c "$d/etc" set-permissions >/dev/null 2>&1
  "$bin/master" -d -c "$d/etc" > "$d/master.out" 2>&1 &
  mta_pid=$!; pids+=("$mta_pid")
  for i in $(seq 200); do
    [ -S "$d/queue/public/pickup" ] && [ -S "$d/queue/public/qmgr" ] && return 0
    sleep 0.05
  done
  echo "facteur master did not come up:" >&2; cat "$d/master.out" "$d/maillog" >&2 2>/dev/null || true
}

stop_facteur() {
  local pid=$1 i
  settled
  kill "$pid" 2>/dev/null || true
  for i in $(seq 200); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
  kill -9 "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

# wait_listening PORT: until something listens on 127.0.0.1:PORT (10 s).
wait_listening() {
  local hex i
  hex=$(printf '0100007F:%04X' "$1")
  for i in $(seq 200); do
    awk -v a="$hex" '$2 == a && $4 == "0A" { f = 1 } END { exit !f }' /proc/net/tcp && return 0
    sleep 0.05
  done
  echo "nothing listens on 127.0.0.1:$1" >&2; return 1
}

