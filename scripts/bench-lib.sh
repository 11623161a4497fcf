# Shell functions shared by the benchmark scripts (bench-pipeline.sh,
# bench-relay.sh). Source it; it defines functions only.

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
    while read -r k v rest; do
      if [ "$k" = "VmRSS:" ]; then total=$((total + v)); break; fi
    done < "/proc/$p/status"
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
