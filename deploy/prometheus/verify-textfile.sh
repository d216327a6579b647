#!/bin/sh
# Runs `audit-relay verify` and writes its result for the node_exporter textfile
# collector, so that the alerts AuditRelayVerifyFailed and AuditRelayVerifyNotRunning
# (deploy/prometheus/alerts.yaml) see it. The relay itself never runs verify: this is
# how a verify result reaches Prometheus. Run it from a timer (systemd, cron) on the
# relay's host, e.g. daily:
#
#   verify-textfile.sh /var/lib/node_exporter/textfile/audit_relay_verify.prom \
#       -c /etc/audit-relay/audit-relay.toml --cloudwatch
#
# Arguments after the output file go to `audit-relay verify` (`--json` is added).
# AUDIT_RELAY names the binary (default: audit-relay on PATH).
#
# Written (atomically: a temporary file renamed over the old one):
#   audit_relay_verify_result                   0 all holds, 1 the chain is broken,
#                                               2 verify could not check (bad config or
#                                               key, spool or CloudWatch unreadable)
#   audit_relay_verify_last_run_timestamp_seconds  when this run ended
#   audit_relay_verify_duration_seconds         how long it took
# The script's own exit code is verify's (0, 1 or 2).
set -u
if [ $# -lt 1 ]; then
    echo "usage: $0 OUTPUT.prom [audit-relay verify arguments...]" >&2
    exit 2
fi
out=$1
shift
bin=${AUDIT_RELAY:-audit-relay}
start=$(date +%s)
report=$("$bin" verify --json "$@")
rc=$?
end=$(date +%s)
case $rc in
    0) result=0 ;;
    1)
        # Exit 1 is both "broken" (a report saying "ok": false) and an error before any
        # report (spool or CloudWatch unreadable): only the first is a broken chain.
        case $report in
            *'"ok":false'*) result=1 ;;
            *) result=2 ;;
        esac
        ;;
    *) result=2 ;;
esac
tmp="$out.$$.tmp"
cat >"$tmp" <<PROM
# HELP audit_relay_verify_result Last audit-relay verify: 0 all holds, 1 chain broken, 2 could not check.
# TYPE audit_relay_verify_result gauge
audit_relay_verify_result $result
# HELP audit_relay_verify_last_run_timestamp_seconds Unix time when the last audit-relay verify ended.
# TYPE audit_relay_verify_last_run_timestamp_seconds gauge
audit_relay_verify_last_run_timestamp_seconds $end
# HELP audit_relay_verify_duration_seconds How long the last audit-relay verify took.
# TYPE audit_relay_verify_duration_seconds gauge
audit_relay_verify_duration_seconds $((end - start))
PROM
mv "$tmp" "$out"
exit $rc
