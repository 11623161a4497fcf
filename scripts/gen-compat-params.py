#!/usr/bin/env python3
"""Regenerate the typed-parameter table of docs/compatibility.md from
libmail/src/config/params.tsv (the section between the BEGIN/END markers),
keeping every status already written by hand and every row of a
parameter the registry does not type.
Run it after changing the registry; the test registry_is_documented fails
until the table lists every typed parameter."""
import os, re
top = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Parameters a daemon acts on today (the rest: config supported, effect
# not yet). Keep this true as daemons learn parameters.
EFFECT = set("""
queue_directory data_directory daemon_directory mail_owner default_privs
myhostname mydomain myorigin mydestination append_at_myorigin
append_dot_mydomain swap_bangpath allow_percent_hack
remote_header_rewrite_domain relay_domains virtual_alias_domains
virtual_mailbox_domains local_transport virtual_transport relay_transport
default_transport relayhost transport_maps parent_domain_matches_subdomains
recipient_delimiter canonical_maps sender_canonical_maps
facteur_dns_servers default_rbl_reply maps_rbl_reject_code rbl_reply_maps
unknown_address_reject_code
recipient_canonical_maps canonical_classes masquerade_domains
masquerade_exceptions masquerade_classes virtual_alias_maps
virtual_alias_recursion_limit virtual_alias_expansion_limit always_bcc
sender_bcc_maps recipient_bcc_maps header_checks body_checks
message_size_limit header_size_limit hopcount_limit queue_minfree
enable_long_queue_ids hash_queue_names hash_queue_depth
minimal_backoff_time maximal_backoff_time queue_run_delay
maximal_queue_lifetime bounce_queue_lifetime qmgr_message_active_limit
default_destination_concurrency_limit default_destination_recipient_limit
local_destination_concurrency_limit local_destination_recipient_limit
max_idle max_use service_throttle_time maillog_file syslog_name
syslog_facility inet_interfaces inet_protocols default_process_limit
alias_maps alias_database forward_path home_mailbox mail_spool_directory
mailbox_command mailbox_size_limit luser_relay allow_mail_to_commands
allow_mail_to_files command_time_limit virtual_mailbox_maps
virtual_mailbox_base virtual_uid_maps virtual_gid_maps
virtual_minimum_uid virtual_mailbox_limit mail_name mail_version
compatibility_level config_directory setgid_group maillog_file_prefixes
""".split())
doc_path = os.path.join(top, "docs/compatibility.md")
doc = open(doc_path).read()
begin = doc.index("<!-- BEGIN typed parameters")
begin = doc.index("-->", begin) + 3
end = doc.index("<!-- END typed parameters -->")
# What the table says now: a status someone wrote by hand ("supported",
# "partial: ...") wins over the EFFECT list, and rows for parameters that
# are not typed in the registry are kept as they are.
existing = {}
for line in doc[begin:end].splitlines():
    m = re.match(r"^\| `([^`]+)` \| ([^|]*) \| (.*?) \| (.*) \|$", line)
    if m:
        existing[m.group(1)] = (line, m.group(3))
rows = {}
for line in open(os.path.join(top, "libmail/src/config/params.tsv")):
    if line.startswith("#"):
        continue
    name, typ, _default, meaning = line.rstrip("\n").split("\t", 3)
    if typ in ("-", "-raw"):
        continue
    meaning = meaning.replace("|", "\\|")
    effect = "supported" if name in EFFECT else "not yet"
    line_now, kept = existing.get(name, (None, "not yet"))
    if kept != "not yet":
        rows[name] = line_now
        continue
    rows[name] = f"| `{name}` | {typ} | {effect} | {meaning} |"
for name, (line, _) in existing.items():
    rows.setdefault(name, line)
rows = [rows[n] for n in sorted(rows)]
table = "\n| parameter | type | effect | meaning |\n|---|---|---|---|\n" + "\n".join(rows) + "\n"
open(doc_path, "w").write(doc[:begin] + table + doc[end:])
print(f"{len(rows)} typed parameters listed")
