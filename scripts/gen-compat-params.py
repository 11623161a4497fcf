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
mailbox_transport mailbox_transport_maps fallback_transport fallback_transport_maps
smtp_tls_fingerprint_cert_match smtp_tls_fingerprint_digest lmtp_tls_fingerprint_cert_match lmtp_tls_fingerprint_digest
smtpd_reject_footer_maps command_execution_directory empty_address_recipient mailbox_command_maps content_filter sender_dependent_relayhost_maps sender_dependent_default_transport_maps
empty_address_relayhost_maps_lookup_key empty_address_default_transport_maps_lookup_key
expand_owner_alias owner_request_special local_command_shell
allow_mail_to_files command_time_limit virtual_mailbox_maps
virtual_mailbox_base virtual_uid_maps virtual_gid_maps
virtual_minimum_uid virtual_mailbox_limit mail_name mail_version
compatibility_level config_directory setgid_group maillog_file_prefixes
smtp_tcp_port smtp_rset_timeout smtp_starttls_timeout smtp_skip_5xx_greeting
smtp_randomize_addresses smtp_connection_cache_time_limit smtp_tls_ciphers smtp_tls_mandatory_ciphers
smtp_tls_exclude_ciphers smtp_tls_mandatory_exclude_ciphers smtp_tls_protocols smtp_tls_mandatory_protocols
smtp_tls_servername smtp_tls_CAfile smtp_tls_CApath smtp_enforce_tls
smtp_use_tls smtp_connection_cache_on_demand smtp_connection_reuse_time_limit smtp_connect_timeout
smtp_data_init_timeout smtp_data_xfer_timeout smtp_data_done_timeout smtp_quit_timeout
smtp_mail_timeout smtp_rcpt_timeout smtp_mx_address_limit smtp_mx_session_limit
smtp_line_length_limit smtp_host_lookup smtp_address_preference smtp_bind_address
smtp_bind_address6 smtp_sasl_auth_enable smtp_sasl_password_maps smtp_sasl_security_options
smtp_sasl_tls_security_options smtp_sasl_mechanism_filter smtp_sender_dependent_authentication smtp_tls_security_level
smtp_tls_loglevel smtp_tls_wrappermode lmtp_tcp_port lmtp_rset_timeout
lmtp_starttls_timeout lmtp_skip_5xx_greeting lmtp_randomize_addresses lmtp_connection_cache_time_limit
lmtp_tls_ciphers lmtp_tls_mandatory_ciphers lmtp_tls_exclude_ciphers lmtp_tls_mandatory_exclude_ciphers
lmtp_tls_protocols lmtp_tls_mandatory_protocols lmtp_tls_servername lmtp_tls_CAfile
lmtp_tls_CApath lmtp_enforce_tls lmtp_use_tls lmtp_connection_cache_on_demand
lmtp_connection_reuse_time_limit lmtp_connect_timeout lmtp_data_init_timeout lmtp_data_xfer_timeout
lmtp_data_done_timeout lmtp_quit_timeout lmtp_mail_timeout lmtp_rcpt_timeout
lmtp_mx_address_limit lmtp_mx_session_limit lmtp_line_length_limit lmtp_host_lookup
lmtp_address_preference lmtp_bind_address lmtp_bind_address6 lmtp_sasl_auth_enable
lmtp_sasl_password_maps lmtp_sasl_security_options lmtp_sasl_tls_security_options lmtp_sasl_mechanism_filter
lmtp_sender_dependent_authentication lmtp_tls_security_level lmtp_tls_loglevel lmtp_tls_wrappermode
smtp_helo_name smtp_helo_timeout smtp_never_send_ehlo lmtp_lhlo_name
lmtp_lhlo_timeout soft_bounce
bounce_template_file enable_threaded_bounces bounce_service_name defer_service_name
trace_service_name delay_warning_time 2bounce_notice_recipient delay_notice_recipient
double_bounce_sender bounce_size_limit initial_destination_concurrency
qmgr_message_recipient_limit
default_destination_concurrency_failed_cohort_limit smtp_tls_cert_file smtp_tls_key_file
smtp_tls_chain_files lmtp_tls_cert_file lmtp_tls_key_file lmtp_tls_chain_files
smtpd_client_connection_count_limit smtpd_client_connection_rate_limit
smtpd_client_message_rate_limit smtpd_client_recipient_rate_limit
smtpd_client_new_tls_session_rate_limit smtpd_client_auth_rate_limit
smtpd_client_event_limit_exceptions anvil_rate_time_unit
smtpd_forbid_bare_newline smtpd_forbid_bare_newline_exclusions
smtpd_forbid_bare_newline_reject_code
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
