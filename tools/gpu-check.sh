#!/usr/bin/env bash
# GPU check for issue 16 (docs/gpu.md). Two steps:
#   tools/gpu-check.sh pack   — here, on a build machine with the .NET SDK: publishes pixart and the TorchProbe
#                               without libtorch natives and packs the .NET runtime into gpu-pack/ (≈ 30 MB, ignored
#                               by git; carry it to the GPU machine).
#   tools/gpu-check.sh run    — on a machine with an NVIDIA GPU and PyTorch 2.10.x/2.11.x installed (python3 finds
#                               torch), no .NET needed: runs the checks and writes their results to $OUT (default
#                               ./gpu-out). Follows shared/docs/gpu-with-pytorch.md, which is how the H200 run was made.
# What run records: the probe's view of the runtime on cuda; the tiny fixture pipelines on CUDA (fp32, fp16, bf16)
# against the CPU fp32 images (max |Δ| in [0, 1]: fp32 must be within 2e-3, fp16/bf16 within the bf16 bounds,
# 4e-2); pixart bench on cuda (random weights, real 1024px configs) at fp16/bf16, batch 1 and 4; model offload.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PACK=$ROOT/gpu-pack
step=${1:-run}

if [[ $step == pack ]]; then
  rm -rf "$PACK" && mkdir -p "$PACK"
  for proj in src/PixArtSharp.Cli/PixArtSharp.Cli.csproj tests/PixArtSharp.TorchProbe/PixArtSharp.TorchProbe.csproj; do
    dotnet publish "$proj" -c Release -o "$PACK/app" --no-self-contained -nologo -v q
  done
  # The GPU machine's libtorch replaces the bundled one; without deps.json the host loads every assembly in the folder.
  rm -f "$PACK"/app/libtorch*.so "$PACK"/app/libc10*.so "$PACK"/app/libgomp*.so* "$PACK"/app/libshm.so \
        "$PACK"/app/lib{jitbackend_test,torchbind_test,aoti_custom_ops,nnapi_backend,backend_with_compiler}.so "$PACK"/app/*.deps.json
  DOTNET_DIR=$(dirname "$(readlink -f "$(command -v dotnet)")")
  rm -rf "$PACK"/app/{cs,de,es,fr,it,ja,ko,pl,pt-BR,ru,tr,zh-Hans,zh-Hant}   # satellite resources
  # The runtime less what pixart never loads (debugger, dump tool, XML, DataContract, VisualBasic): the device
  # machine takes at most 64 MiB along.
  ( cd "$DOTNET_DIR" && tar --exclude='*/createdump' --exclude='*libmscordbi.so' --exclude='*libmscordaccore.so' \
      --exclude='*System.Private.Xml*' --exclude='*System.Xml*' --exclude='*DataContract*' --exclude='*VisualBasic*' \
      -cJf "$PACK/dotnet-runtime.tar.xz" dotnet host shared/Microsoft.NETCore.App shared/Microsoft.AspNetCore.App )
  FIX=$ROOT/../shared/fixtures; [[ -d $FIX ]] || FIX=$ROOT/shared/fixtures
  cp -r "$FIX/tiny-pixart" "$FIX/tiny-pixart-lcm" "$PACK/"
  # The device call carries at most 64 MiB: the app (libvips alone is 18 MB) travels compressed.
  tar -C "$PACK" -cJf "$PACK/app.tar.xz" app && rm -rf "$PACK/app"
  du -sh "$PACK"
  exit 0
fi

[[ $step == run ]] || { echo "usage: $0 pack|run" >&2; exit 2; }
OUT=${OUT:-$ROOT/gpu-out}
mkdir -p "$OUT"
[[ -f $PACK/app.tar.xz ]] || { echo "gpu-pack/ is missing: run '$0 pack' on a build machine and bring gpu-pack/ along" >&2; exit 2; }
APP=/tmp/pixart-app/app
rm -rf /tmp/pixart-app && mkdir -p /tmp/pixart-app && tar -xJf "$PACK/app.tar.xz" -C /tmp/pixart-app
export DOTNET_ROOT=/tmp/pixart-dotnet
mkdir -p "$DOTNET_ROOT" && tar -xJf "$PACK/dotnet-runtime.tar.xz" -C "$DOTNET_ROOT"
export PATH=$DOTNET_ROOT:$PATH DOTNET_CLI_TELEMETRY_OPTOUT=1
# PIXART_LIBTORCH given: that libtorch (a dry run on a build machine can point it at the NuGet CPU libtorch).
TORCH_LIB=${PIXART_LIBTORCH:-$(python3 -c "import torch, os; print(os.path.join(os.path.dirname(torch.__file__), 'lib'))")}
export PIXART_LIBTORCH=$TORCH_LIB
{
  echo "date: $(date -u +%FT%TZ)"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
  python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" || echo "no python3 torch; libtorch: $TORCH_LIB"
} | tee "$OUT/machine.txt"
run() { local name=$1; shift; echo "+ $*" | tee -a "$OUT/commands.txt"; local t0=$SECONDS; "$@" >"$OUT/$name.out" 2>"$OUT/$name.err" || echo "FAILED ($?): $name" | tee -a "$OUT/failures.txt"; echo "$name: $((SECONDS - t0)) s" >>"$OUT/durations.txt"; }

# 1. The runtime as the library sees it (libtorch from PIXART_LIBTORCH, CUDA devices, dtype auto).
run probe-cuda dotnet "$APP/PixArtSharp.TorchProbe.dll" cuda
run probe-auto-python env -u PIXART_LIBTORCH dotnet "$APP/PixArtSharp.TorchProbe.dll" auto   # python3's torch found by itself

# 2. Tiny fixture pipelines, CUDA against CPU fp32 (same seed, same prompt; PNG pixels compared in [0, 1]).
for fixture in tiny-pixart-lcm tiny-pixart; do
  steps=$([[ $fixture == tiny-pixart-lcm ]] && echo 4 || echo 8)
  common=("a red fox in the snow" --model "$PACK/$fixture" --seed 7 --steps "$steps" --height 64 --width 64 --quiet)
  run "gen-$fixture-cpu-fp32" dotnet "$APP/pixart.dll" generate "${common[@]}" --device cpu --dtype fp32 --output "$OUT/$fixture-cpu-fp32.png"
  for dt in fp32 fp16 bf16; do
    run "gen-$fixture-cuda-$dt" dotnet "$APP/pixart.dll" generate "${common[@]}" --device cuda --dtype "$dt" --output "$OUT/$fixture-cuda-$dt.png"
  done
  # The model card's CPU offload on a real GPU: the same pixels as everything on the GPU.
  for off in model sequential; do
    run "gen-$fixture-cuda-fp32-offload-$off" dotnet "$APP/pixart.dll" generate "${common[@]}" --device cuda --dtype fp32 --offload "$off" --output "$OUT/$fixture-cuda-fp32-offload-$off.png"
  done
done
python3 - "$OUT" <<'PY' | tee "$OUT/fixtures.txt"
import sys, zlib, struct, glob, os
def png(path):
    d = open(path, 'rb').read(); pos = 8; idat = b''; w = h = None
    while pos < len(d):
        n, t = struct.unpack('>I4s', d[pos:pos + 8]); body = d[pos + 8:pos + 8 + n]; pos += 12 + n
        if t == b'IHDR': w, h, depth, ctype = struct.unpack('>IIBB', body[:10]); assert depth == 8 and ctype == 2
        elif t == b'IDAT': idat += body
    raw = zlib.decompress(idat); stride = w * 3; rows = []; prev = bytearray(stride)
    for y in range(h):
        f = raw[y * (stride + 1)]; line = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - 3] if i >= 3 else 0; b = prev[i]; c = prev[i - 3] if i >= 3 else 0
            if f == 1: line[i] = (line[i] + a) & 255
            elif f == 2: line[i] = (line[i] + b) & 255
            elif f == 3: line[i] = (line[i] + (a + b) // 2) & 255
            elif f == 4:
                p = a + b - c; pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append(line); prev = line
    return b''.join(rows)
out = sys.argv[1]; bound = {'fp32': 2e-3, 'fp16': 4e-2, 'bf16': 4e-2}
for fx in ('tiny-pixart-lcm', 'tiny-pixart'):
    ref = os.path.join(out, f'{fx}-cpu-fp32.png')
    if not os.path.exists(ref): print(fx, 'no CPU image'); continue
    a = png(ref)
    for dt in ('fp32', 'fp16', 'bf16'):
        p = os.path.join(out, f'{fx}-cuda-{dt}.png')
        if not os.path.exists(p): print(fx, dt, 'no CUDA image'); continue
        b = png(p); m = max(abs(x - y) for x, y in zip(a, b)) / 255
        # 8-bit PNGs: a difference under one level (3.9e-3) shows as 0 or 1/255.
        print(f'{fx} cuda {dt}: max |Δ| = {m:.2e} (bound {max(bound[dt], 1/255):.1e}) {"ok" if m <= max(bound[dt], 1/255) else "OVER"}')
    whole = os.path.join(out, f'{fx}-cuda-fp32.png')
    for off in ('model', 'sequential'):
        p = os.path.join(out, f'{fx}-cuda-fp32-offload-{off}.png')
        if not (os.path.exists(p) and os.path.exists(whole)): print(fx, 'offload', off, 'no image'); continue
        m = max(abs(x - y) for x, y in zip(png(whole), png(p))) / 255
        print(f'{fx} cuda fp32 --offload {off} vs none: max |Δ| = {m:.2e} {"ok" if m == 0 else "DIFFERENT"}')
PY

# 3. The server's warm-up on CUDA (tiny model): "warmed up in" on stderr, then one request.
( set +e
  dotnet "$APP/pixart.dll" serve --model "$PACK/tiny-pixart-lcm" --device cuda --port 7961 >"$OUT/serve.out" 2>"$OUT/serve.err" &
  pid=$!
  python3 - "$pid" <<'PY' >"$OUT/serve-client.txt" 2>&1
import json, os, sys, time, urllib.request
for _ in range(240):
    if not os.path.exists(f'/proc/{sys.argv[1]}'): sys.exit('the server exited')
    try: urllib.request.urlopen('http://127.0.0.1:7961/health', timeout=1).read(); break
    except Exception: time.sleep(0.25)
body = json.dumps({'prompt': 'a red fox in the snow', 'size': '64x64', 'seed': 7, 'steps': 4, 'response_format': 'b64_json'}).encode()
for i in range(3):
    t = time.time()
    r = urllib.request.urlopen(urllib.request.Request('http://127.0.0.1:7961/v1/images/generations', body, {'Content-Type': 'application/json'}), timeout=60)
    print('request', i, r.status, f'{time.time() - t:.3f} s', len(r.read()), 'bytes')
print(urllib.request.urlopen('http://127.0.0.1:7961/health').read().decode()[:600])
PY
  kill $pid; wait $pid ) || true

# 4. Speed and memory: random weights on the real PixArt-LCM-XL-2-1024-MS configs, synchronised stage timings,
#    NVML GPU memory per stage, --repeat = steady-state runs with everything loaded. Most important first; nothing new
#    starts after DEADLINE seconds so the whole run ends inside the device call.
DEADLINE=${DEADLINE:-420}
bench() { local name=$1; shift
  if (( SECONDS > DEADLINE )); then echo "skipped (deadline): $name" | tee -a "$OUT/skipped.txt"; return; fi
  run "$name" timeout 120 "$@"; }
B=(dotnet "$APP/pixart.dll" bench --device cuda --json)
bench bench-fp16-b1 "${B[@]}" --dtype fp16 --batch 1 --repeat 5
for cl in 1 0; do for bm in 1 0; do
  bench "bench-vae-cl$cl-bm$bm" env PIXART_VAE_CHANNELS_LAST=$cl PIXART_CUDNN_BENCHMARK=$bm "${B[@]}" --component vae --dtype fp16 --repeat 5
done; done
bench bench-fp16-b8 "${B[@]}" --dtype fp16 --batch 8 --repeat 3
bench bench-fp16-offload-model env PYTORCH_NO_CUDA_MEMORY_CACHING=1 "${B[@]}" --dtype fp16 --offload model --repeat 2
bench bench-fp16-nocache env PYTORCH_NO_CUDA_MEMORY_CACHING=1 "${B[@]}" --dtype fp16
bench bench-fp16-offload-seq env PYTORCH_NO_CUDA_MEMORY_CACHING=1 "${B[@]}" --dtype fp16 --offload sequential
bench bench-bf16-b1 "${B[@]}" --dtype bf16 --batch 1 --repeat 3
bench bench-fp16-b4 "${B[@]}" --dtype fp16 --batch 4 --repeat 3

# For later sessions: which CUDA caching-allocator entry points this libtorch exports (no TorchSharp binding).
nm -D --defined-only "$TORCH_LIB/libc10_cuda.so" 2>/dev/null | grep -iE "emptyCache|getDeviceStats|resetPeakStats" | head -20 >"$OUT/c10_cuda_symbols.txt" || true
nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1 || true

# One file back per bench (the device tool returns at most 8 files): every JSON in one, every log in another.
python3 - "$OUT" <<'PY'
import glob, json, os, sys
out = sys.argv[1]; results = {}
for f in sorted(glob.glob(os.path.join(out, 'bench-*.out'))):
    name = os.path.basename(f)[:-4]; text = open(f).read().strip()
    try: results[name] = json.loads(text.splitlines()[-1]) if text else None
    except Exception as e: results[name] = {'unparsed': text[-2000:]}
json.dump(results, open(os.path.join(out, 'bench.json'), 'w'), indent=1)
PY
# The device tool brings back at most 8 files: bench.json and fixtures.txt, everything else in one archive.
cat "$OUT/durations.txt" "$OUT/fixtures.txt" "$OUT"/skipped.txt "$OUT"/failures.txt 2>/dev/null || true
tar -czf /tmp/gpu-all.tar.gz -C "$OUT" --exclude=./bench.json --exclude=./fixtures.txt . && find "$OUT" -type f ! -name bench.json ! -name fixtures.txt -delete && mv /tmp/gpu-all.tar.gz "$OUT/all.tar.gz"
echo "results in $OUT"; ls "$OUT"
! grep -qE "OVER|DIFFERENT" "$OUT/fixtures.txt" 2>/dev/null
