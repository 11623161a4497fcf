#!/usr/bin/env bash
# Run Facteur's whole test suite on a Debian machine.
#
# Installs what the tests need when it is missing (Postfix, whose postconf is
# the reference the differential tests compare against; swaks; tinycdb;
# pflogsumm, which must count the end-to-end tests' logs right; Perl's TLS
# modules for swaks --tls; Dovecot, for the SASL and LMTP tests against a
# real server; postgrey, a real policy server; python3-aiosmtpd, for the
# scripted SMTP/LMTP peer of the delivery-agent tests), then runs
# every test with cargo-nextest when present, else cargo test.
#
# Usage: scripts/test.sh [extra arguments for the test runner]
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
# postconf needs a main.cf: a package installed with "No configuration" has
# none in /etc/postfix, so ask with an empty one of our own.
pcdir=$(mktemp -d)
: > "$pcdir/main.cf"
{ command -v /usr/sbin/postconf && /usr/sbin/postconf -c "$pcdir" -m | grep -x pcre; } >/dev/null 2>&1 || need+=(postfix postfix-pcre)
rm -rf "$pcdir"
command -v swaks >/dev/null 2>&1 || need+=(swaks)
command -v cdb >/dev/null 2>&1 || need+=(tinycdb)
command -v pflogsumm >/dev/null 2>&1 || need+=(pflogsumm)
# swaks --tls needs Perl's TLS modules (smtpd STARTTLS tests).
perl -MIO::Socket::SSL -e1 >/dev/null 2>&1 || need+=(libio-socket-ssl-perl)
perl -MNet::SSLeay -e1 >/dev/null 2>&1 || need+=(libnet-ssleay-perl)
# The throwaway Dovecot of ../shared/fixtures/dovecot (SASL and LMTP tests).
[ -x /usr/sbin/dovecot ] && [ -x /usr/bin/doveadm ] || need+=(dovecot-core)
[ -x /usr/lib/dovecot/lmtp ] || need+=(dovecot-lmtpd)
# A real policy server for check_policy_service (daemons/tests/smtpd_policy.rs).
[ -x /usr/sbin/postgrey ] || need+=(postgrey)
# A real DNS server for the DNS restrictions (daemons/src/smtpd/restrict/tests.rs).
[ -x /usr/sbin/dnsmasq ] || need+=(dnsmasq-base)
# The scripted SMTP/LMTP server of the delivery-agent tests
# (daemons/tests/data/scripted_smtpd.py runs under Debian's /usr/bin/python3),
# and the openssl CLI that makes their test certificates.
/usr/bin/python3 -c 'import aiosmtpd' >/dev/null 2>&1 || need+=(python3-aiosmtpd)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
if [ ${#need[@]} -gt 0 ]; then
  echo "scripts/test.sh: installing ${need[*]} (needed by the tests)"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  # Postfix's package asks how to configure itself; "No configuration" keeps
  # it from touching the machine: the tests use throwaway config dirs.
  echo "postfix postfix/main_mailer_type select No configuration" | $sudo debconf-set-selections
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# The end-to-end tests run programs of both crates (master with sendmail,
# facteur with master): build every program first.
cargo build --workspace --bins --quiet

# The fuzz targets (not a workspace member) must keep compiling as the
# code they drive changes; running them is scripts/fuzz.sh's job.
cargo check --quiet --manifest-path fuzz/Cargo.toml --bins --target-dir target/fuzz-check

if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast "$@"
  # nextest does not run doctests.
  cargo test --workspace --doc --quiet
else
  cargo test --workspace --no-fail-fast "$@"
fi
