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
  du -sh "$PACK"
  exit 0
fi

[[ $step == run ]] || { echo "usage: $0 pack|run" >&2; exit 2; }
OUT=${OUT:-$ROOT/gpu-out}
mkdir -p "$OUT"
[[ -d $PACK/app ]] || { echo "gpu-pack/ is missing: run '$0 pack' on a build machine and bring gpu-pack/ along" >&2; exit 2; }
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
APP=$PACK/app
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
PY

# 3. Speed: random weights on the real PixArt-LCM-XL-2-1024-MS configs, synchronised stage timings, peak memory.
for dt in fp16 bf16; do
  run "bench-1024-$dt-b1" dotnet "$APP/pixart.dll" bench --device cuda --dtype "$dt" --batch 1 --json
done
run bench-1024-fp16-b4 dotnet "$APP/pixart.dll" bench --device cuda --dtype fp16 --batch 4 --json
run bench-1024-fp16-b8 dotnet "$APP/pixart.dll" bench --device cuda --dtype fp16 --batch 8 --json
# 4. Model offload (once the CLI has --offload): peaks per stage.
run bench-1024-fp16-offload dotnet "$APP/pixart.dll" bench --device cuda --dtype fp16 --offload model --json

for f in "$OUT"/bench-*.out; do if [[ -s $f ]]; then cp "$f" "${f%.out}.json"; fi; done   # --json prints one object on stdout
echo "results in $OUT"; ls "$OUT"
[[ ! -s $OUT/failures.txt ]] || { cat "$OUT/failures.txt"; exit 1; }
