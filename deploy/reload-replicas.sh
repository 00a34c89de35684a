#!/bin/bash
# Make every replica serve a new index generation: POST /admin/reload to each replica directly, since nginx sends a
# request (and /admin/ only from its own host) to one replica. Without --path each replica re-reads the CURRENT
# generation of the index folder it serves (what `robust-retrieval index --append` just published); with --path,
# the index at PATH (inside the replicas' index root). Exit status 1 when any replica did not switch.
#
#   RR_ADMIN_KEY=... deploy/reload-replicas.sh [--path PATH] http://10.0.0.11:8000 http://10.0.0.12:8000 ...
set -u
body='{}'
if [ "${1:-}" = "--path" ]; then
    body=$(python3 -c 'import json, sys; print(json.dumps({"path": sys.argv[1]}))' "${2:?--path needs a value}")
    shift 2
fi
if [ $# -eq 0 ] || [ -z "${RR_ADMIN_KEY:-}" ]; then
    echo "usage: RR_ADMIN_KEY=KEY $0 [--path PATH] REPLICA_URL..." >&2
    exit 2
fi
failed=0
for replica in "$@"; do
    # the key travels in a header file, not on curl's command line (visible to every user in ps)
    if answer=$(curl -sS --fail-with-body --max-time 300 -H @<(printf 'X-Admin-Key: %s\n' "$RR_ADMIN_KEY") \
                     -H 'Content-Type: application/json' -d "$body" "$replica/admin/reload" 2>&1); then
        echo "$replica: $answer"
    else
        echo "$replica: reload failed: $answer" >&2
        failed=1
    fi
done
exit $failed
