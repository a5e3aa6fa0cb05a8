#!/usr/bin/env bash
# Signatures per second through FerroHSM's PKCS#11 module (over shm and over TCP) and through
# SoftHSM2's, in the same run on the same machine: P-256 (CKM_ECDSA over a digest) and
# Ed25519 (CKM_EDDSA), 1 and 4 threads, one session each.
#
#   pkcs11/bench.sh [SECONDS] [JSON_OUT] [REPS]   (defaults: 5 s a run, no JSON file, 3 runs)
#
# Each row is REPS interleaved runs of the three (the order turning each time, so no module
# always follows the same one); the table gives each one's median, the range of the per-run
# shm / SoftHSM2 ratio and the median per-run TCP / shm ratio (the one-request-at-a-time goal:
# P-256 at one thread over TCP at least half of shm). This machine is shared: compare within a
# row, never across.
#
# Installs SoftHSM2 and OpenSC from Debian's packages when missing (needs root for that).
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-5}"
json_out="${2:-}"
reps="${3:-3}"
export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-2}"

missing=()
[ -e /usr/lib/softhsm/libsofthsm2.so ] || missing+=(softhsm2)
command -v pkcs11-tool >/dev/null 2>&1 || missing+=(opensc)
if [ "${#missing[@]}" -gt 0 ]; then
    echo "bench: installing ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update >/dev/null
    apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null
fi
softhsm=/usr/lib/softhsm/libsofthsm2.so

cargo build --release --locked -q -p ferrohsm-server --bin hsmd -p ferrohsm-client --bin hsmctl \
    -p ferrohsm-pkcs11 --lib --example p11bench
bin=target/release
module="$PWD/$bin/libferrohsm_pkcs11.so"
bench="$PWD/$bin/examples/p11bench"

work="$(mktemp -d)"
trap 'kill "$hsmd_pid" 2>/dev/null || true; rm -rf "$work"' EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
"$bin/hsmd" init --dir "$work/d" --clients bench --tcp "127.0.0.1:$(port)" \
    --tls "127.0.0.1:$(port)" --tls-psk "127.0.0.1:$(port)" >/dev/null
sed -i 's/^max_keys_per_client = .*/max_keys_per_client = 1000000/' "$work/d/hsmd.toml"
RUST_LOG=warn "$bin/hsmd" --config "$work/d/hsmd.toml" >"$work/hsmd.out" 2>"$work/hsmd.log" &
hsmd_pid=$!
for _ in $(seq 100); do grep -q listening "$work/hsmd.out" && break; sleep 0.1; done
profile="$work/d/clients/bench.toml"
for t in shm tcp; do
    sed "s/^default_transport = .*/default_transport = \"$t\"/" "$profile" >"$work/d/clients/bench-$t.toml"
    printf 'profiles = ["d/clients/bench-%s.toml"]\n' "$t" >"$work/ferro-$t.toml"
done
"$bin/hsmctl" --profile "$profile" keygen --type p256 --label p1 >/dev/null
"$bin/hsmctl" --profile "$profile" keygen --type ed25519 --label e1 >/dev/null

# SoftHSM2: a token of its own in the work directory, the same two key types.
export SOFTHSM2_CONF="$work/softhsm2.conf"
mkdir "$work/tokens"
printf 'directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\n' "$work/tokens" >"$SOFTHSM2_CONF"
softhsm2-util --init-token --free --label bench --pin 1234 --so-pin 5678 >/dev/null
for kt in EC:prime256v1:p1 EC:edwards25519:e1; do
    pkcs11-tool --module "$softhsm" --token-label bench --login --pin 1234 --keypairgen \
        --key-type "${kt%:*}" --label "${kt##*:}" >/dev/null
done

run() { # NAME MODULE CONFIG PIN KEY MECH THREADS
    FERROHSM_PKCS11_CONFIG="$3" "$bench" "$2" bench "$4" "$5" "$6" "$7" "$secs" |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["per_sec"])'
}
median() { python3 -c 'import statistics,sys; print(statistics.median(float(x) for x in sys.argv[1:]))' "$@"; }
rows=()
printf '| mechanism | threads | FerroHSM over shm | FerroHSM over TCP | SoftHSM2 | shm / SoftHSM2 (median, range of %s runs) | TCP / shm |\n|---|---|---|---|---|---|---|\n' "$reps"
for mk in ecdsa:p1 eddsa:e1; do
    mech="${mk%:*}"; key="${mk#*:}"
    for th in 1 4; do
        softs=(); shms=(); tcps=(); ratios=(); tcp_ratios=()
        for r in $(seq "$reps"); do
            soft=""; shm=""; tcp=""
            for who in $(case $((r % 3)) in 1) echo soft shm tcp;; 2) echo shm tcp soft;; *) echo tcp soft shm;; esac); do
                case $who in
                    soft) soft="$(run softhsm "$softhsm" /dev/null 1234 "$key" "$mech" "$th")"; softs+=("$soft");;
                    shm) shm="$(run ferro "$module" "$work/ferro-shm.toml" "" "$key" "$mech" "$th")"; shms+=("$shm");;
                    tcp) tcp="$(run ferro "$module" "$work/ferro-tcp.toml" "" "$key" "$mech" "$th")"; tcps+=("$tcp");;
                esac
            done
            ratios+=("$(python3 -c "print(f'{$shm/$soft:.2f}')")")
            tcp_ratios+=("$(python3 -c "print(f'{$tcp/$shm:.2f}')")")
        done
        m_soft="$(median "${softs[@]}")"; m_shm="$(median "${shms[@]}")"; m_tcp="$(median "${tcps[@]}")"
        m_ratio="$(median "${ratios[@]}")"; m_tcp_ratio="$(median "${tcp_ratios[@]}")"
        lo="$(printf '%s\n' "${ratios[@]}" | sort -n | head -1)"; hi="$(printf '%s\n' "${ratios[@]}" | sort -n | tail -1)"
        printf '| %s | %s | %.0f | %.0f | %.0f | %sx (%s–%s) | %sx |\n' "$mech" "$th" "$m_shm" "$m_tcp" "$m_soft" "$m_ratio" "$lo" "$hi" "$m_tcp_ratio"
        rows+=("{\"mechanism\":\"$mech\",\"threads\":$th,\"ferrohsm_shm\":$m_shm,\"ferrohsm_tcp\":$m_tcp,\"softhsm2\":$m_soft,\"ratio_shm\":$m_ratio,\"ratio_tcp_shm\":$m_tcp_ratio,\"ratios\":[$(IFS=,; echo "${ratios[*]}")]}")
    done
done
if [ -n "$json_out" ]; then
    (IFS=,; printf '{"cpus":%s,"seconds":%s,"reps":%s,"results":[%s]}\n' "$(nproc)" "$secs" "$reps" "${rows[*]}") >"$json_out"
fi
