# Helpers shared by wisp's benchmark scripts: quiet-machine waits, pinned
# servers, wrk runs with medians, wisp nodes and deploys. Sourced; expects
# RUNS, SECONDS_PER_RUN, CONNECTIONS, SERVER_CPU, LOAD_CPU, WISP, work and
# pids to be set by the script.

# Waits until other load is under ~15% of a core (two /proc/stat reads 3 s apart).
wait_quiet() {
    for _ in $(seq 20); do
        read -r _ u1 n1 s1 i1 w1 q1 sq1 _ < /proc/stat
        sleep 3
        read -r _ u2 n2 s2 i2 w2 q2 sq2 _ < /proc/stat
        local busy=$(( (u2+n2+s2+q2+sq2) - (u1+n1+s1+q1+sq1) ))
        local total=$(( busy + (i2+w2) - (i1+w1) ))
        # busy/total is the share of both cores; 15% of one core is 7.5% of two.
        if [ $(( busy * 1000 / (total > 0 ? total : 1) )) -lt 75 ]; then return 0; fi
    done
    echo "bench: the machine did not get quiet; measuring anyway" >&2
}

# Starts a server on SERVER_CPU; waits until URL answers.
start() { # name url command...
    local name=$1 url=$2; shift 2
    nice -n -20 taskset -c $SERVER_CPU "$@" > "$work/$name.out" 2> "$work/$name.err" &
    pids+=($!)
    for _ in $(seq 300); do
        curl -sf -o /dev/null "$url" && return 0
        sleep 0.05
    done
    echo "bench: $name did not answer at $url" >&2; cat "$work/$name.err" >&2; exit 1
}

# Stops the servers started so far and waits until they are gone, so the
# next ones can take their ports.
stop_servers() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    pids=()
}

# One wrk run: prints "rps p50_ms p99_ms", then "non2xx=N" and "errors=N" when there were any.
load() { # url [script]
    nice -n -20 taskset -c $LOAD_CPU wrk -t1 -c$CONNECTIONS -d${SECONDS_PER_RUN}s --latency "$@" 2>/dev/null | awk '
        function ms(v) { if (v ~ /us$/) return v/1000; if (v ~ /ms$/) return v+0; if (v ~ /s$/) return v*1000; return v }
        /Requests\/sec/ { rps = $2 }
        /^ +50%/ { p50 = ms($2) }
        /^ +99%/ { p99 = ms($2) }
        /Non-2xx/ { bad = $5 }
        /Socket errors/ { gsub(",", ""); err = $4 + $6 + $8 + $10 }
        END { printf "%d %.2f %.2f%s%s\n", rps, p50, p99, (bad ? " non2xx=" bad : ""), (err ? " errors=" err : "") }'
}

median() { sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
minmax() { sort -n | awk 'NR == 1 { lo = $1 } { hi = $1 } END { print lo "–" hi }'; }

# Runs configurations alternately; prints one table row each.
compare() { # label:url ...
    declare -A results
    wrk -t1 -c$CONNECTIONS -d2s "${1#*:}" >/dev/null 2>&1 || true
    for _ in $(seq "$RUNS"); do
        for config in "$@"; do
            local label=${config%%:*} url=${config#*:}
            wait_quiet
            wrk -t1 -c$CONNECTIONS -d1s "$url" >/dev/null 2>&1 || true
            results[$label]+="$(load "$url")"$'\n'
        done
    done
    for config in "$@"; do
        local label=${config%%:*}
        local rows=${results[$label]}
        local rps p50 p99
        rps=$(echo -n "$rows" | awk '{ print $1 }' | median)
        p50=$(echo -n "$rows" | awk '{ print $2 }' | median)
        p99=$(echo -n "$rows" | awk '{ print $3 }' | median)
        printf "| %s | %s | %s | %s | %s |\n" "$label" "$rps" "$(echo -n "$rows" | awk '{ print $1 }' | minmax)" "$p50" "$p99"
        echo "$label $rps" >> "$work/medians"
    done
    # Answers that were not 2xx, or failed, are said after the table.
    for config in "$@"; do
        local label=${config%%:*} bad
        bad=$(echo -n "${results[$label]}" | grep -o 'non2xx=[0-9]*\|errors=[0-9]*' | tr '\n' ' ' || true)
        [ -z "$bad" ] || echo "$label: $bad(over all runs)" >> "$work/failures"
    done
    if [ -s "$work/failures" ]; then echo; cat "$work/failures"; rm "$work/failures"; fi
}

ratio() { awk -v a="$(grep "^$1 " "$work/medians" | tail -1 | awk '{ print $NF }')" -v b="$(grep "^$2 " "$work/medians" | tail -1 | awk '{ print $NF }')" 'BEGIN { printf "%.2f", a / b }'; }

# A wisp node on its own data directory; sets NODE_URL and NODE_TOKEN.
start_wisp() { # name data_dir [wisp up arguments...]
    local name=$1 data=$2; shift 2
    nice -n -20 taskset -c $SERVER_CPU "$WISP" up --listen 127.0.0.1:0 --data-dir "$data" "$@" > "$work/$name.out" 2> "$work/$name.err" &
    pids+=($!)
    NODE_PID=$!
    for _ in $(seq 600); do grep -q '^admin token: ' "$work/$name.out" 2>/dev/null && break; sleep 0.01; done
    NODE_URL=$(sed -n 's/^listening on //p' "$work/$name.out")
    NODE_TOKEN=$(sed -n 's/^admin token: //p' "$work/$name.out")
}

deploy() { # name kind digest-or-empty [command [extra JSON fields]]
    local image=""; [ -n "$3" ] && image=", \"image\": \"$3\""
    local command=""; [ -n "${4:-}" ] && command=", \"envProcess\": \"$4\""
    local extra=""; [ -n "${5:-}" ] && extra=", $5"
    curl -sf -o /dev/null -H "Authorization: Bearer $NODE_TOKEN" -d "{\"service\": \"$1\", \"kind\": \"$2\"$image$command$extra}" "$NODE_URL/system/functions"
}

upload() { curl -sf -H "Authorization: Bearer $NODE_TOKEN" -T "$1" "$NODE_URL/system/artifacts" | sed 's/.*"digest":"\([^"]*\)".*/\1/'; }

# Milliseconds since the epoch, as a float.
now_ms() { date +%s.%N | awk '{ printf "%.1f", $1 * 1000 }'; }
first_200() { until curl -sf -o /dev/null "$1"; do :; done; }

admin() { curl -sf -H "Authorization: Bearer $NODE_TOKEN" "$@"; }
# A figure of the node's async queue, from /system/info (depth, running, triggerFirings).
queue() { admin "$NODE_URL/system/info" | python3 -c "import json,sys; q=json.load(sys.stdin)['queue']; print(q['$1'])"; }
# Waits until the queue is empty and nothing runs. One process polls every
# 20 ms: a curl and a python3 per poll would take a good share of a core from
# the node while it drains, and the figure would be the poller's.
drained() {
    python3 - "$NODE_URL/system/info" "$NODE_TOKEN" <<'PY' || { echo "bench: the queue did not drain" >&2; exit 1; }
import json, sys, time, urllib.request
request = urllib.request.Request(sys.argv[1], headers={"Authorization": "Bearer " + sys.argv[2]})
for _ in range(30000):
    queue = json.load(urllib.request.urlopen(request))["queue"]
    if queue["depth"] == 0 and queue["running"] == 0:
        sys.exit(0)
    time.sleep(0.02)
sys.exit(1)
PY
}
