#!/usr/bin/env bash
# Run Facteur on its built-in default configuration, as an ordinary user,
# on loopback, with the queue and the mailboxes under ./run.
#
# It copies conf/ to ./run/etc (once; delete ./run/etc to start over),
# points the paths at ./run with postconf -e, checks the configuration,
# and starts the mail system in the foreground.
set -euo pipefail
cd "$(dirname "$0")/.."
top=$PWD

cargo build --quiet --bins
bin=$top/target/debug

if [ ! -f run/etc/main.cf ]; then
  mkdir -p run/etc run/data run/mail
  cp conf/main.cf conf/master.cf run/etc/
  "$bin/postconf" -c run/etc -e \
    "queue_directory = $top/run/queue" \
    "data_directory = $top/run/data" \
    "mail_spool_directory = $top/run/mail/" \
    "mail_owner = $(id -un)" \
    "setgid_group = $(id -gn)" \
    "default_privs = $( [ "$(id -u)" = 0 ] && echo nobody || id -un)"
fi
# The daemons are the ones this checkout built.
"$bin/postconf" -c run/etc -e "daemon_directory = $bin"

echo "== configuration in run/etc (postconf -n):"
"$bin/postconf" -c run/etc -n
echo "== facteur check:"
"$bin/facteur" -c run/etc check -v && echo "configuration OK"
echo "== facteur set-permissions (queue directory under ./run/queue):"
"$bin/facteur" -c run/etc set-permissions

echo "== starting the mail system in the foreground (Ctrl-C stops it)."
echo "   Try: $bin/sendmail -C run/etc \$(id -un) < some-message; mail lands in run/mail/\$(id -un)/new"
echo "   or over SMTP on 127.0.0.1:10025: swaks --server 127.0.0.1 --port 10025 --to \$(id -un)@localhost"
exec "$bin/facteur" -c run/etc start-fg
