using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using TorchSharp;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace PixArtSharp.Loading.Gguf;

/// <summary>
/// <c>F.linear(x, W)</c> for a block-encoded CPU weight W [out, in], decoded a tile of output rows at a time: each core
/// takes the next tile, decodes it into its own buffer (≈ 4 MiB, mostly still in its caches) and multiplies it at once
/// with a single-threaded libtorch linear, so the decoded matrix never exists whole and the encoded bytes are the only
/// weight traffic from memory.
/// <para>
/// Why one core per tile rather than decoding a tile on all cores and then multiplying it with libtorch's threads:
/// libtorch's OpenMP workers spin between parallel regions, and on a small machine they spin on the cores the C#
/// decoder needs (measured with 2 cores and other processes running: 20–40 ms per 10240×4096 Q8_0 matrix on 120
/// tokens this way, 100–800 ms alternating). A thread's OpenMP team size is a per-thread setting
/// (<c>omp_set_num_threads</c> sets the calling thread's ICV, which ATen's <c>get_num_threads</c> reads), so the
/// calling thread and the helper threads each run libtorch single-threaded here without changing any other thread.
/// Where that entry point is not found (a libtorch without GNU OpenMP), the tiles are decoded on all cores and
/// multiplied with libtorch's own threads, one after the other.
/// </para>
/// </summary>
internal static class GgmlTiledLinear
{
    /// <summary>
    /// Bytes of decoded weight per tile, about. Measured on the whole Q8_0 T5-XXL (120 tokens, 2 cores, AMX): 1.7–2.1 s
    /// with 4–8 MiB tiles against 2.3–2.8 s with 0.5–1 MiB ones, which fit a core's 2 MiB L2 but pay libtorch's
    /// per-call cost (weight packing, dispatch) 4–8 times as often; 16 MiB: 1.9–2.0 s.
    /// </summary>
    public const long TileBytes = 4 << 20;

    /// <summary>Whether tiles run one per core (libtorch's OpenMP entry points found); else the shared fallback.</summary>
    public static bool PerCore => Omp.Available;

    /// <summary>
    /// Rows of a tile for this weight and thread count: about <see cref="TileBytes"/> of decoded weight, the tile count a
    /// multiple of the threads so that they finish together, a multiple of 16 rows (the last tile takes the rest).
    /// </summary>
    public static long DefaultTileRows(long outFeatures, long inFeatures, ScalarType dtype, int threads)
    {
        long bytesPerRow = inFeatures * (dtype == ScalarType.Float32 ? 4 : 2);
        long tiles = Math.Max(1, (outFeatures * bytesPerRow + TileBytes / 2) / TileBytes);
        tiles = (tiles + threads - 1) / threads * threads;
        long rows = (outFeatures + tiles - 1) / tiles;
        return Math.Min(outFeatures, (rows + 15) / 16 * 16);
    }

    /// <param name="raw">The encoded blocks, uint8 [out · in / block size · type size], CPU, contiguous.</param>
    /// <param name="x">[…, in] in <paramref name="dtype"/></param>
    /// <returns>[…, out] in <paramref name="dtype"/></returns>
    public static Tensor Forward(GgmlType type, Tensor raw, long outF, long inF, Tensor x, ScalarType dtype, long tileRows)
    {
        int threads = _scopeThreads > 0 ? _scopeThreads : Math.Max(1, TorchSharp.torch.get_num_threads());
        bool amx = tileRows == 0 && GgmlAmxLinear.Supports(type, outF, inF, dtype);
        long rows = amx ? GgmlAmxLinear.SliceRows : Math.Min(outF, tileRows > 0 ? tileRows : DefaultTileRows(outF, inF, dtype, threads));
        long tiles = (outF + rows - 1) / rows;
        threads = (int)Math.Min(threads, Math.Min(tiles, 64));
        var job = new Job(type, raw, outF, inF, rows, tiles, x, dtype, amx);
        if (threads > 1 && Omp.Available)
        {
            Workers.Run(job, threads - 1);               // helpers take tiles as they come; this thread too
            int own = Omp.MaxThreads();
            Omp.SetThreads(1);
            try { job.Work(CallerBuffer); }
            finally { Omp.SetThreads(own); }
            job.Wait();
        }
        else if (amx) job.Work(CallerBuffer);
        else job.WorkShared();
        return job.Result();
    }

    /// <summary>The libtorch thread count the calling thread had when it entered <see cref="CallerSingleThreaded"/>.</summary>
    [ThreadStatic] private static int _scopeThreads;

    /// <summary>
    /// Until disposed, libtorch runs single-threaded on the calling thread, while the quantized linears called from it
    /// still use every core through their helpers. For a forward whose big work is those linears (a GGUF T5): between
    /// libtorch's parallel regions its OpenMP workers spin-wait on the other cores, the cores the helpers decode on,
    /// and small ops (a 25-token attention, the norms) gain nothing from them. Measured on the Q8_0 T5-XXL, 2 cores:
    /// with the spinning workers the helper got ≈ 40 % of the tiles and a 25-token forward took 1.1–1.3 s; without
    /// them (<c>OMP_WAIT_POLICY=PASSIVE</c>, the same effect for the whole process) 0.67–0.76 s. Null where libtorch's
    /// OpenMP entry points were not found or it already runs one thread.
    /// </summary>
    public static IDisposable? CallerSingleThreaded()
    {
        if (!Omp.Available || _scopeThreads > 0) return null;
        int threads = TorchSharp.torch.get_num_threads();
        return threads > 1 ? new SingleThreaded(threads) : null;
    }

    private sealed class SingleThreaded : IDisposable
    {
        private readonly int _own;
        private bool _disposed;

        public SingleThreaded(int threads)
        {
            _own = Omp.MaxThreads();
            _scopeThreads = threads;
            Omp.SetThreads(1);
        }

        public void Dispose()
        {
            if (_disposed) return;
            _disposed = true;
            Omp.SetThreads(_own);
            _scopeThreads = 0;
        }
    }

    /// <summary>The calling thread's tile, kept between calls (≈ 4 MiB per thread that ran a quantized linear): a fresh
    /// one per call would be paged in anew each time.</summary>
    [ThreadStatic] private static TileBuffer? _callerBuffer;
    private static TileBuffer CallerBuffer => _callerBuffer ??= new TileBuffer();

    /// <summary>One thread's tile: a flat buffer that grows to the largest tile asked for and is then reused.</summary>
    private sealed unsafe class TileBuffer
    {
        private Tensor? _flat;
        private void* _packed, _acc;
        private long _packedBytes, _accBytes;

        /// <summary>The AMX path's packed slice (64-byte aligned, grown as needed, kept for the thread's life).</summary>
        public uint* Packed(long bytes) => (uint*)(_packed = Grown(_packed, ref _packedBytes, bytes));

        /// <summary>The AMX path's fp32 accumulator [M, 64] (likewise).</summary>
        public float* Accumulator(long floats) => (float*)(_acc = Grown(_acc, ref _accBytes, floats * sizeof(float)));

        private static void* Grown(void* buffer, ref long have, long need)
        {
            if (have >= need) return buffer;
            NativeMemory.AlignedFree(buffer);
            have = need;
            return NativeMemory.AlignedAlloc((nuint)need, 64);
        }

        public Tensor Get(long rows, long cols, ScalarType dtype)
        {
            if (_flat is null || _flat.dtype != dtype || _flat.numel() < rows * cols)
            {
                _flat?.Dispose();
                using (NewDisposeScope()) _flat = empty(rows * cols, dtype).DetachFromDisposeScope();
            }
            return _flat.narrow(0, 0, rows * cols).view(rows, cols);
        }
    }

    /// <summary>One linear: tiles handed out in order to whichever thread asks next; their outputs joined at the end.</summary>
    private sealed unsafe class Job
    {
        private readonly GgmlType type;
        private readonly Tensor raw, x;
        private readonly long outF, inF, rows, tiles;
        private readonly ScalarType dtype;
        private readonly Tensor?[] _parts;
        private long _next = -1;
        private int _pending;
        private readonly TaskCompletionSource _done = new(TaskCreationOptions.RunContinuationsAsynchronously);
        private Exception? _error;
        /// <summary>AMX path: x as [M, in] bf16, and the bf16 [M, out] every slice writes its columns of.</summary>
        private readonly Tensor? _x2, _out;

        public Job(GgmlType type, Tensor raw, long outF, long inF, long rows, long tiles, Tensor x, ScalarType dtype, bool amx)
        {
            (this.type, this.raw, this.outF, this.inF, this.rows, this.tiles, this.x, this.dtype) = (type, raw, outF, inF, rows, tiles, x, dtype);
            _parts = new Tensor?[amx ? 0 : tiles];
            if (amx)
            {
                using var scope = NewDisposeScope();
                _x2 = x.reshape(-1, inF).contiguous().DetachFromDisposeScope();                     // [M, in] bf16
                _out = empty(_x2.shape[0], outF, ScalarType.BFloat16).DetachFromDisposeScope();       // [M, out] bf16
            }
        }

        public void AddHelpers(int n) => _pending = n;

        /// <summary>Takes tiles until none is left (on a thread running libtorch single-threaded).</summary>
        public void Work(TileBuffer buffer)
        {
            if (_out is not null) { WorkAmx(buffer); return; }
            long blocksPerRow = inF / GgmlTypes.BlockSize(type);
            try
            {
                for (long t = Interlocked.Increment(ref _next); t < tiles && _error is null; t = Interlocked.Increment(ref _next))
                {
                    long r0 = t * rows, n = Math.Min(rows, outF - r0);
                    using var tile = buffer.Get(n, inF, dtype);                                     // [n, in]
                    GgmlCpuDecode.DecodeInto(type, raw, r0 * blocksPerRow, n * blocksPerRow, tile, parallel: false);
                    using (NewDisposeScope()) _parts[t] = F.linear(x, tile).DetachFromDisposeScope(); // […, n]
                }
            }
            catch (Exception e) { Interlocked.CompareExchange(ref _error, e, null); }
        }

        /// <summary>The AMX path: 64-row slices decoded into the thread's packed buffer and multiplied into their columns.</summary>
        private void WorkAmx(TileBuffer buffer)
        {
            try
            {
                long rowBytes = inF / GgmlTypes.BlockSize(type) * GgmlTypes.TypeSize(type), m = _x2!.shape[0];
                uint* packed = buffer.Packed(GgmlAmxLinear.SliceBytes(inF));
                float* acc = buffer.Accumulator(m * GgmlAmxLinear.SliceRows);
                byte* w = (byte*)Data(raw);
                ushort* xs = (ushort*)Data(_x2);
                ushort* o = (ushort*)Data(_out!);
                GgmlAmxLinear.BeginThread();
                try
                {
                    for (long t = Interlocked.Increment(ref _next); t < tiles && _error is null; t = Interlocked.Increment(ref _next))
                        GgmlAmxLinear.Slice(type, w + t * rows * rowBytes, inF, xs, m, o + t * rows, outF, packed, acc);
                }
                finally { GgmlAmxLinear.EndThread(); }
            }
            catch (Exception e) { Interlocked.CompareExchange(ref _error, e, null); }
        }

        private static void* Data(Tensor t) => Unsafe.AsPointer(ref MemoryMarshal.GetReference(t.bytes));

        /// <summary>A helper's share, then its check-in.</summary>
        public void HelperWork(TileBuffer buffer)
        {
            Work(buffer);
            if (Interlocked.Decrement(ref _pending) == 0) _done.SetResult();
        }

        /// <summary>Until every helper has checked in (the last one completes the task; nothing to dispose).</summary>
        public void Wait() => _done.Task.Wait();

        /// <summary>The fallback: each tile decoded on all cores, then multiplied with libtorch's threads.</summary>
        public void WorkShared()
        {
            long blocksPerRow = inF / GgmlTypes.BlockSize(type);
            var buffer = CallerBuffer;
            for (long t = 0; t < tiles; t++)
            {
                long r0 = t * rows, n = Math.Min(rows, outF - r0);
                using var tile = buffer.Get(n, inF, dtype);
                GgmlCpuDecode.DecodeInto(type, raw, r0 * blocksPerRow, n * blocksPerRow, tile);
                using (NewDisposeScope()) _parts[t] = F.linear(x, tile).DetachFromDisposeScope();
            }
        }

        public Tensor Result()
        {
            try
            {
                if (_error is not null) throw new InvalidOperationException($"The tiled {type} linear failed: {_error.Message}", _error);
                if (_out is not null)
                {
                    long[] shape = [.. x.shape[..^1], outF];
                    return _out.view(shape);                                                        // […, out]
                }
                return torch.cat(_parts!, -1);                                                      // […, out]
            }
            finally
            {
                foreach (var p in _parts) p?.Dispose();
                _x2?.Dispose();
                _out?.Dispose();
            }
        }
    }

    /// <summary>
    /// Dedicated helper threads (background, started on first use, as many as the most ever asked for), each with its
    /// own tile buffer and libtorch set to one thread on it. Not the .NET thread pool: its threads run other code,
    /// whose libtorch calls must keep their thread count.
    /// </summary>
    private static class Workers
    {
        private static readonly object Lock = new();
        private static readonly List<Helper> Helpers = [];

        public static void Run(Job job, int n)
        {
            job.AddHelpers(n);
            lock (Lock)
            {
                while (Helpers.Count < n) Helpers.Add(new Helper(Helpers.Count));
                // One job at a time per helper: a second concurrent linear queues behind the first on the helpers.
                for (int i = 0; i < n; i++) Helpers[i].Post(job);
            }
        }

        private sealed class Helper
        {
            private readonly System.Collections.Concurrent.BlockingCollection<Job> _jobs = [];

            public Helper(int index)
            {
                var thread = new Thread(Loop) { IsBackground = true, Name = $"pixart-gguf-tile-{index}" };
                thread.Start();
            }

            public void Post(Job job) => _jobs.Add(job);

            private void Loop()
            {
                try
                {
                    TorchSharp.torch.get_num_threads();    // ATen's per-thread start-up first (it sets the team size)
                    Omp.SetThreads(1);
                }
                catch (Exception) { /* slower with libtorch's default team on this thread, but never a caller left waiting */ }
                var buffer = new TileBuffer();
                foreach (var job in _jobs.GetConsumingEnumerable()) job.HelperWork(buffer);   // never throws: Work keeps the error for the caller
            }
        }
    }

    /// <summary>The OpenMP runtime libtorch links (GNU libgomp in the libtorch-cpu builds): its per-thread team size.</summary>
    private static unsafe class Omp
    {
        private static readonly delegate* unmanaged<int, void> Set;
        private static readonly delegate* unmanaged<int> Get;

        public static bool Available => Set != null && Get != null;
        public static void SetThreads(int n) => Set(n);
        public static int MaxThreads() => Get();

        static Omp()
        {
            // dlsym on the loaded libtorch_cpu's handle searches it and its dependencies (where libgomp is).
            try
            {
                string? path = TorchRuntime.LoadedLibraryPath("libtorch_cpu.so");
                if (path is null || !NativeLibrary.TryLoad(path, out var lib)) return;
                if (NativeLibrary.TryGetExport(lib, "omp_set_num_threads", out var set) && NativeLibrary.TryGetExport(lib, "omp_get_max_threads", out var get))
                {
                    Set = (delegate* unmanaged<int, void>)set;
                    Get = (delegate* unmanaged<int>)get;
                }
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException) { }
        }
    }
}
