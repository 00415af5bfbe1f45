#!/bin/bash
# Device run: fastpath per-core scaling (server and load on separate
# physical cores) and the bench-client / stock-frpc cells against frps.
set -u
exec > >(tee "$OUT/log.txt") 2>&1
R=$PWD
D=$R/.dev
echo "== machine"; date -u; uname -a; nproc; grep -m1 "model name" /proc/cpuinfo; free -g | head -2
gunzip -f $D/frps.gz $D/frpc.gz; chmod +x $D/*
export FASTPATH_BIN=$D/fastpath FRPS_BIN=$D/frps FRPC_BIN=$D/frpc
ulimit -n 65536 2>/dev/null || true
for c in /sys/devices/system/cpu/cpu[0-9]*; do echo "$(basename $c) core=$(cat $c/topology/core_id 2>/dev/null) pkg=$(cat $c/topology/physical_package_id 2>/dev/null) sib=$(cat $c/topology/thread_siblings_list 2>/dev/null)"; done | sort -V | head -20
# Split physical cores in two halves: server gets the first thread of each
# of its physical cores first, then their siblings; load the rest.
read SRV LOAD < <(python3 - <<'PY'
import glob,os,re
cores={}
for c in glob.glob('/sys/devices/system/cpu/cpu[0-9]*'):
    n=int(re.search(r'cpu(\d+)$',c).group(1))
    try:
        k=(open(c+'/topology/physical_package_id').read().strip(),open(c+'/topology/core_id').read().strip())
    except OSError:
        k=('0',str(n))
    cores.setdefault(k,[]).append(n)
phys=sorted((sorted(v) for v in cores.values()), key=lambda v:v[0])
h=len(phys)//2
srv=[v[0] for v in phys[:h]]+[x for v in phys[:h] for x in v[1:]]
load=sorted(x for v in phys[h:] for x in v)
print(','.join(map(str,srv)), ','.join(map(str,load)))
PY
)
echo "server CPUs (in order): $SRV   load CPUs: $LOAD"
echo "== driver probe"
printf 'bindAddr = "127.0.0.1"\nbindPort = 17999\nauth.token = "x"\n' > /tmp/fp.toml
RUST_LOG=info timeout 3 $D/fastpath -c /tmp/fp.toml --workers 2 2>&1 | grep -m3 "worker started\|ERROR\|WARN"
echo "== scaling"; date -u
timeout 290 $D/totoro-bench run --suite scaling --systems bench/systems.toml \
  --server-cpus "$SRV" --load-cpus "$LOAD" --scale-workers ${SCALE:-1,2,4,8,16} --repeats ${REPS:-3} \
  --out $OUT/scaling 2>&1 | grep -v "^   \(server\|connrate\)"
echo "== cells"; date -u
timeout 270 $D/totoro-bench run --suite full --systems bench/systems.toml --repeats ${REPS:-2} \
  --metrics bulk1_up,bulk1_down,bulk8_up,bulk8_down,http \
  --only fastpath+bench,frps+bench,fastpath+frpc-tls,frps+frpc-tls --out $OUT/cells 2>&1 | tail -n 45
rm -rf $OUT/scaling/scratch $OUT/cells/scratch
date -u; ls -la $OUT/*
