#!/usr/bin/env bash
# The multi-core measurements of PERF.md ("Truthful figures beyond two
# cores"), as one bounded run on a many-core machine. Takes a folder with
# stripped release builds of wsrelay, loadtest and the `scaling` criterion
# bench (built elsewhere: cargo build --release; cargo bench --bench scaling
# --no-run), and writes the reports to OUT (default ./out).
#
#   loadtest/device-scaling.sh BIN_DIR [OUT] [SECTIONS]
#
# SECTIONS, comma-separated, picks parts (default all): bench, fanout,
# fanout6000, storm, cluster.
set -uo pipefail
bin=$1
out=${2:-out}
sections=,${3:-bench,fanout,fanout6000,storm,cluster},
want() { [[ $sections == *",$1,"* ]]; }
mkdir -p "$out"
export WSRELAY_BIN=$bin/wsrelay
echo "== machine: $(nproc) cores, $(uname -r),$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2), open files $(ulimit -Hn)"
t0=$(date +%s)
# Each run: io_uring, 4 s measured (DURATION=N for another) after 1 s; the
# tables, not the JSON, to stdout.
lt() {
    local name=$1
    shift
    timeout 150 "$bin/loadtest" "$@" --io uring --duration "${DURATION:-4}" --warmup 1 --json "$out/$name.json" \
        >"$out/$name.txt" 2>&1
    sed -n '/^[a-z]*: [0-9]* jobs/,$p' "$out/$name.txt" | grep -v '^{'
    # Each step's verdict, with the machine's busy and stolen share.
    grep -a ' step [0-9]*: ' "$out/$name.txt" | sed 's/.*\r//'
}

if want bench; then
echo "== scaling bench: W threads delivering one stream to their own subscribers"
timeout 120 "$bin/scaling" --bench --warm-up-time 1 --measurement-time 2 2>&1 | grep -E '^scaling|time:|thrpt:'
fi

if want fanout; then
echo "== fanout: 1,000 subscribers of one group, 1,500 events/s (1.5M deliveries/s)"
lt fanout1500 fanout --subscribers 1000 --rate 1500 --workers 1,2,4,8
echo "== the same, every client write at once (--client-write-interval-us 0)"
lt fanout1500-eager fanout --subscribers 1000 --rate 1500 --workers 1,2,4,8 --node-arg=--client-write-interval-us=0
fi
if want fanout6000; then
echo "== fanout at 6,000 events/s (6M deliveries/s), paced and eager writes"
lt fanout6000 fanout --subscribers 1000 --rate 6000 --workers 4,8
lt fanout6000-eager fanout --subscribers 1000 --rate 6000 --workers 4,8 --node-arg=--client-write-interval-us=0
echo "== fanout at 10,000 events/s (10M deliveries/s), 8 workers"
lt fanout10000 fanout --subscribers 1000 --rate 10000 --workers 8
fi
if want storm; then
echo "== storm: 200 jobs x 2 viewers + 100 watchers at 50,000 events/s"
lt storm storm --rate 50000 --workers 1,2,4,8
fi
if want cluster; then
echo "== cluster: 3 nodes, 1 job, 100 viewers, 20,000 events/s"
lt cluster cluster --viewers 100 --rate 20000 --workers 1,2,4
fi

if want broker; then
# Issue 13's goals: the emitting node's egress against N through the mesh and
# through NATS (10 viewers on every other node, so every delivery crosses the
# backplane), the 8-node storm at 20,000 events/s, and a broker restart in it.
command -v nats-server >/dev/null || echo "!! no nats-server in $bin or PATH: the nats runs will fail"
for n in 2 4 8; do
    for b in mesh nats; do
        echo "== cluster: $n nodes over $b, 1 job at 20,000 events/s, 10 viewers per other node"
        lt "cluster-$b-$n" cluster --backplane "$b" --nodes "$n" --viewers $((10 * (n - 1))) --rate 20000
    done
done
# The goal as the issue words it: 10 viewers on each of the 8 nodes, the
# emitting one too, 10 s measured (a 4 s window is dominated by its first
# second, the broker's warm-up; the report's timeline has every second).
echo "== cluster: the goal: 8 nodes over nats, 10 viewers on every node, 20,000 events/s, 10 s"
DURATION=10 lt cluster-nats-8-goal cluster --backplane nats --nodes 8 --viewers 80 --viewers-on-every-node --rate 20000
echo "== cluster: 8 nodes over nats, the broker SIGKILLed 2 s in and restarted (64 MiB client queues)"
lt cluster-nats-8-restart cluster --backplane nats --nodes 8 --viewers 70 --rate 20000 \
    --broker-restart-at 2 --node-arg=--queue-bytes=67108864
fi

echo "== done in $(( $(date +%s) - t0 )) s"
