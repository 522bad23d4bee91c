using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using static TorchSharp.torch;

namespace PixArtSharp.Loading.Gguf;

/// <summary>
/// The block-encoded (Q8_0, Q4_K, Q5_K, Q6_K) × bf16 linear on CPUs with AMX: each 64-row slice of the weight is
/// decoded straight into the VNNI layout
/// the AMX micro-kernel reads (bf16 pairs of consecutive inputs, [in / 2, 64, 2]) and multiplied at once by
/// libtorch's exported oneDNN micro-kernel (<c>at::native::cpublas::brgemm</c>, the one its flash attention calls),
/// accumulating in fp32, then rounded to bf16 once.
/// <para>
/// Why: the tiled path (<see cref="GgmlTiledLinear"/>) hands each decoded tile to <c>F.linear</c>, whose oneDNN matmul
/// reorders the whole tile into this same layout on every call. With the few rows a prompt has (25 tokens: ≈ 10 GB/s
/// of weight through the reorder), that copy, not the arithmetic, was the T5's cost. Measured on 2 AMX cores, one
/// 512×4096 bf16 slice, weights in cache: <c>F.linear</c> 0.32–0.41 ms (25 rows) / 0.73–0.79 ms (120 rows), the
/// micro-kernel on a packed slice 0.16–0.20 / 0.55–0.58 ms.
/// </para>
/// <para>
/// The kernels are found by their C++ names in libtorch 2.10's libtorch_cpu; where they are missing, or oneDNN
/// cannot run AMX here (<c>could_pack</c>), <see cref="IsAvailable"/> is false and the tiled path runs. The shapes
/// passed are always ones the micro-kernel takes (N = 64, even K), because a failed check inside it would end the
/// process rather than throw.
/// </para>
/// </summary>
internal static unsafe class GgmlAmxLinear
{
    /// <summary>Output rows (weight rows) per micro-kernel call: the packed B's leading dimension (oneDNN takes 16–64).</summary>
    public const int SliceRows = 64;

    /// <summary>Input rows per micro-kernel call.</summary>
    private const long MaxRowsPerCall = 256;

    private static readonly delegate* unmanaged<long, long, long, long, long, long, byte, void*, void*, float*, byte, void> Brgemm;
    private static readonly delegate* unmanaged<byte, void> BrgemmRelease;

    /// <summary>Whether the AMX path runs here: AVX-512 for the decoder, the libtorch kernels found, AMX usable by oneDNN.</summary>
    public static bool IsAvailable { get; }

    static GgmlAmxLinear()
    {
        if (!OperatingSystem.IsLinux() || RuntimeInformation.ProcessArchitecture != Architecture.X64 || !Avx512F.IsSupported || !Avx512BW.IsSupported)
            return;
        if (Environment.GetEnvironmentVariable("PIXART_GGUF_AMX") == "0") return;
        try
        {
            TorchRuntime.EnsureLoaded();   // the kernels are looked up in the loaded libtorch_cpu (a first use may precede any tensor)
            string? path = TorchRuntime.LoadedLibraryPath("libtorch_cpu.so");
            if (path is null || !NativeLibrary.TryLoad(path, out var lib)) return;
            // Itanium C++ ABI names of at::native::cpublas::brgemm(long ×6, bool, BFloat16 const*, BFloat16 const*,
            // float*, bool), brgemm_release(bool) and could_pack(ScalarType).
            if (NativeLibrary.TryGetExport(lib, "_ZN2at6native7cpublas6brgemmEllllllbPKN3c108BFloat16ES5_Pfb", out var brgemm)
                && NativeLibrary.TryGetExport(lib, "_ZN2at6native7cpublas14brgemm_releaseEb", out var release)
                && NativeLibrary.TryGetExport(lib, "_ZN2at6native7cpublas10could_packEN3c1010ScalarTypeE", out var couldPack))
            {
                Brgemm = (delegate* unmanaged<long, long, long, long, long, long, byte, void*, void*, float*, byte, void>)brgemm;
                BrgemmRelease = (delegate* unmanaged<byte, void>)release;
                // could_pack(bf16): oneDNN's "AMX usable" (the VNNI micro-kernel would not run without it).
                IsAvailable = ((delegate* unmanaged<sbyte, byte>)couldPack)((sbyte)ScalarType.BFloat16) != 0;
            }
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or BadImageFormatException or TorchUnavailableException) { }
    }

    /// <summary>Whether this weight and input take the AMX path.</summary>
    public static bool Supports(GgmlType type, long outFeatures, long inFeatures, ScalarType dtype) =>
        IsAvailable && GgmlCpuDecode.Supports(type) && dtype == ScalarType.BFloat16
        && outFeatures % SliceRows == 0 && inFeatures % GgmlTypes.BlockSize(type) == 0 && inFeatures <= (1 << 20);

    /// <summary>Bytes of one thread's packed slice for this input width.</summary>
    public static long SliceBytes(long inFeatures) => inFeatures * SliceRows * 2;

    /// <summary>
    /// Before a thread's first micro-kernel call of a linear: libtorch caches the tile configuration it last set on
    /// the thread, and oneDNN's own matmuls release the tiles in between (a call on the stale cache would fault).
    /// </summary>
    public static void BeginThread() => BrgemmRelease(1);

    /// <summary>After a thread's last call: frees the tiles for whatever runs next on it.</summary>
    public static void EndThread() => BrgemmRelease(1);

    /// <summary>
    /// out[:, r0 : r0 + 64] (bf16, row stride <paramref name="outStride"/>) = x · W[r0 : r0 + 64]ᵀ for the 64 encoded rows
    /// at <paramref name="rows"/> (each <paramref name="inFeatures"/> values of <paramref name="type"/>): decoded into <paramref name="packed"/>
    /// (<see cref="SliceBytes"/>), multiplied into the fp32 <paramref name="acc"/> [m, 64], rounded to bf16 as torch's
    /// cast rounds.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void Slice(GgmlType type, byte* rows, long inFeatures, ushort* x, long m, ushort* outColumns, long outStride, uint* packed, float* acc)
    {
        DecodePacked(type, rows, inFeatures, packed);
        // At most 256 rows per call (what libtorch's flash attention passes): the micro-kernel is generated per shape.
        for (long i0 = 0; i0 < m; i0 += MaxRowsPerCall)
            Brgemm(Math.Min(MaxRowsPerCall, m - i0), SliceRows, inFeatures, inFeatures, SliceRows, SliceRows, 0,
                   x + i0 * inFeatures, packed, acc + i0 * SliceRows, 1);
        for (long i = 0; i < m; i++)
        {
            float* a = acc + i * SliceRows;
            ushort* o = outColumns + i * outStride;
            for (int j = 0; j < SliceRows; j += 16)
                Avx512F.ConvertToVector256UInt16(GgmlCpuDecode.ToBf16(Vector512.Load(a + j))).Store(o + j);
        }
    }

    /// <summary>
    /// Decodes 64 rows of <paramref name="inFeatures"/> values into VNNI pairs: packed[j · 64 + n] holds row n's bf16
    /// values 2j (low half) and 2j + 1 (high half), the layout oneDNN's <c>pack_B</c> writes for a [K, 64] B. The values
    /// are the bits <see cref="GgmlCpuDecode"/> gives. Per 16 rows × 32 values: 16 vectors of 16 pairs, transposed in
    /// registers, 16 full-line stores. Q8_0 blocks and Q4_K / Q5_K sub-blocks are decoded straight into the registers;
    /// a Q6_K super-block (256 values) of each of 16 rows is decoded first into a small bf16 scratch (in L1) by the row
    /// decoder.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void DecodePacked(GgmlType type, byte* rows, long inFeatures, uint* packed)
    {
        int bs = GgmlTypes.BlockSize(type), ts = GgmlTypes.TypeSize(type);
        long blocks = inFeatures / bs, rowBytes = blocks * ts;
        if (type == GgmlType.Q8_0)
        {
            for (int g = 0; g < SliceRows; g += 16)
                for (long b = 0; b < blocks; b++)
                    Block16(default(Q8_0Pairs), rows + g * rowBytes + b * ts, rowBytes, packed + b * 16 * SliceRows + g);
            return;
        }
        if (type is GgmlType.Q4_K or GgmlType.Q5_K)
        {
            // Straight into the registers too: sub-block j (32 values) of each of 16 rows' super-blocks.
            for (int g = 0; g < SliceRows; g += 16)
                for (long b = 0; b < blocks; b++)
                    for (int j = 0; j < 8; j++)
                        Block16(new KPairs(j, type == GgmlType.Q5_K), rows + g * rowBytes + b * ts, rowBytes, packed + (b * bs + 32 * j) / 2 * SliceRows + g);
            return;
        }
        ushort* scratch = stackalloc ushort[16 * GgmlTypes.QK_K];                                     // [16, 256] bf16
        for (int g = 0; g < SliceRows; g += 16)
            for (long b = 0; b < blocks; b++)
            {
                for (int r = 0; r < 16; r++) GgmlCpuDecode.DecodeBf16(type, rows + (g + r) * rowBytes + b * ts, scratch + r * bs, 1);
                for (int c = 0; c < bs; c += 32)                                                    // 16 pairs per row
                    Block16(default(Bf16Pairs), (byte*)(scratch + c), bs * 2, packed + (b * bs + c) / 2 * SliceRows + g);
            }
    }

    /// <summary>Where a row's 16 pairs come from: a Q8_0 block, a K-quant sub-block, or 32 decoded bf16 values.</summary>
    private interface IPairSource
    {
        Vector512<uint> Load(byte* p);
    }

    private readonly struct Q8_0Pairs : IPairSource
    {
        public Vector512<uint> Load(byte* p) => Pairs(p);
    }

    private readonly struct Bf16Pairs : IPairSource
    {
        public Vector512<uint> Load(byte* p) => Vector512.Load((uint*)p);
    }

    /// <summary>
    /// Sub-block <paramref name="J"/> of the Q4_K / Q5_K super-block at p: (d·sc)·q − dmin·m in fp32, multiply and
    /// subtract rounded separately, as <see cref="GgmlCpuDecode"/>'s Q4Q5_KBf16 (the same bits), then rounded and
    /// paired as <see cref="Pairs"/> does. A finite d and dmin give finite values; otherwise the NaN rule applies.
    /// </summary>
    private readonly struct KPairs(int J, bool HasHigh) : IPairSource
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public Vector512<uint> Load(byte* x)
        {
            byte* s = x + 4;
            int sc, m;
            if (J < 4) { sc = s[J] & 0x3F; m = s[J + 4] & 0x3F; }
            else { sc = (s[J + 4] & 0x0F) | ((s[J - 4] >> 2) & 0x30); m = (s[J + 4] >> 4) | ((s[J] >> 2) & 0x30); }
            float d = GgmlCpuDecode.HalfToSingle(x), dmin = GgmlCpuDecode.HalfToSingle(x + 2);
            var dj = Vector512.Create(d * sc);
            var mj = Vector512.Create(dmin * m);
            byte* qs = HasHigh ? x + 48 : x + 16;
            var v = (Vector256.Load(qs + 32 * (J / 2)) >> (4 * (J % 2))) & Vector256.Create((byte)0x0F);
            if (HasHigh) v |= ((Vector256.Load(x + 16) >> J) & Vector256<byte>.One) << 4;
            var lo = dj * Avx512F.ConvertToVector512Single(Avx512F.ConvertToVector512Int32(v.GetLower())) - mj;
            var hi = dj * Avx512F.ConvertToVector512Single(Avx512F.ConvertToVector512Int32(v.GetUpper())) - mj;
            bool finite = (*(ushort*)x & 0x7C00) != 0x7C00 && (*(ushort*)(x + 2) & 0x7C00) != 0x7C00;
            return RoundPairs(lo, hi, finite);
        }
    }

    /// <summary>
    /// Block b of 16 rows → 16 stores of 16 pairs: row r's pairs are a row of a 16 × 16 matrix of 32-bit lanes,
    /// transposed in registers (locals, not an array, so that they stay in the 32 vector registers).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]   // too large to inline: compiled optimised at once, not tier 0
    private static void Block16<TSource>(TSource source, byte* blk, long rowBytes, uint* dst) where TSource : struct, IPairSource
    {
        var r0 = source.Load(blk + 0 * rowBytes);
        var r1 = source.Load(blk + 1 * rowBytes);
        var r2 = source.Load(blk + 2 * rowBytes);
        var r3 = source.Load(blk + 3 * rowBytes);
        var r4 = source.Load(blk + 4 * rowBytes);
        var r5 = source.Load(blk + 5 * rowBytes);
        var r6 = source.Load(blk + 6 * rowBytes);
        var r7 = source.Load(blk + 7 * rowBytes);
        var r8 = source.Load(blk + 8 * rowBytes);
        var r9 = source.Load(blk + 9 * rowBytes);
        var r10 = source.Load(blk + 10 * rowBytes);
        var r11 = source.Load(blk + 11 * rowBytes);
        var r12 = source.Load(blk + 12 * rowBytes);
        var r13 = source.Load(blk + 13 * rowBytes);
        var r14 = source.Load(blk + 14 * rowBytes);
        var r15 = source.Load(blk + 15 * rowBytes);
        // 1. 32-bit interleave of row pairs.
        var t0 = Avx512F.UnpackLow(r0, r1); var t1 = Avx512F.UnpackHigh(r0, r1);
        var t2 = Avx512F.UnpackLow(r2, r3); var t3 = Avx512F.UnpackHigh(r2, r3);
        var t4 = Avx512F.UnpackLow(r4, r5); var t5 = Avx512F.UnpackHigh(r4, r5);
        var t6 = Avx512F.UnpackLow(r6, r7); var t7 = Avx512F.UnpackHigh(r6, r7);
        var t8 = Avx512F.UnpackLow(r8, r9); var t9 = Avx512F.UnpackHigh(r8, r9);
        var t10 = Avx512F.UnpackLow(r10, r11); var t11 = Avx512F.UnpackHigh(r10, r11);
        var t12 = Avx512F.UnpackLow(r12, r13); var t13 = Avx512F.UnpackHigh(r12, r13);
        var t14 = Avx512F.UnpackLow(r14, r15); var t15 = Avx512F.UnpackHigh(r14, r15);
        // 2. 64-bit interleave within groups of four rows: r[i + c] lane L = column 4L + c of rows i … i + 3.
        r0 = Lo64(t0, t2); r1 = Hi64(t0, t2); r2 = Lo64(t1, t3); r3 = Hi64(t1, t3);
        r4 = Lo64(t4, t6); r5 = Hi64(t4, t6); r6 = Lo64(t5, t7); r7 = Hi64(t5, t7);
        r8 = Lo64(t8, t10); r9 = Hi64(t8, t10); r10 = Lo64(t9, t11); r11 = Hi64(t9, t11);
        r12 = Lo64(t12, t14); r13 = Hi64(t12, t14); r14 = Lo64(t13, t15); r15 = Hi64(t13, t15);
        // 3. 128-bit lanes: even / odd lanes of row groups i and i + 4.
        t0 = Avx512F.Shuffle4x128(r0, r4, 0x88); t4 = Avx512F.Shuffle4x128(r0, r4, 0xDD);
        t1 = Avx512F.Shuffle4x128(r1, r5, 0x88); t5 = Avx512F.Shuffle4x128(r1, r5, 0xDD);
        t2 = Avx512F.Shuffle4x128(r2, r6, 0x88); t6 = Avx512F.Shuffle4x128(r2, r6, 0xDD);
        t3 = Avx512F.Shuffle4x128(r3, r7, 0x88); t7 = Avx512F.Shuffle4x128(r3, r7, 0xDD);
        t8 = Avx512F.Shuffle4x128(r8, r12, 0x88); t12 = Avx512F.Shuffle4x128(r8, r12, 0xDD);
        t9 = Avx512F.Shuffle4x128(r9, r13, 0x88); t13 = Avx512F.Shuffle4x128(r9, r13, 0xDD);
        t10 = Avx512F.Shuffle4x128(r10, r14, 0x88); t14 = Avx512F.Shuffle4x128(r10, r14, 0xDD);
        t11 = Avx512F.Shuffle4x128(r11, r15, 0x88); t15 = Avx512F.Shuffle4x128(r11, r15, 0xDD);
        // 4. 128-bit lanes across the two halves: column c of all 16 rows.
        Avx512F.Shuffle4x128(t0, t8, 0x88).Store(dst + 0 * SliceRows);
        Avx512F.Shuffle4x128(t0, t8, 0xDD).Store(dst + 8 * SliceRows);
        Avx512F.Shuffle4x128(t1, t9, 0x88).Store(dst + 1 * SliceRows);
        Avx512F.Shuffle4x128(t1, t9, 0xDD).Store(dst + 9 * SliceRows);
        Avx512F.Shuffle4x128(t2, t10, 0x88).Store(dst + 2 * SliceRows);
        Avx512F.Shuffle4x128(t2, t10, 0xDD).Store(dst + 10 * SliceRows);
        Avx512F.Shuffle4x128(t3, t11, 0x88).Store(dst + 3 * SliceRows);
        Avx512F.Shuffle4x128(t3, t11, 0xDD).Store(dst + 11 * SliceRows);
        Avx512F.Shuffle4x128(t4, t12, 0x88).Store(dst + 4 * SliceRows);
        Avx512F.Shuffle4x128(t4, t12, 0xDD).Store(dst + 12 * SliceRows);
        Avx512F.Shuffle4x128(t5, t13, 0x88).Store(dst + 5 * SliceRows);
        Avx512F.Shuffle4x128(t5, t13, 0xDD).Store(dst + 13 * SliceRows);
        Avx512F.Shuffle4x128(t6, t14, 0x88).Store(dst + 6 * SliceRows);
        Avx512F.Shuffle4x128(t6, t14, 0xDD).Store(dst + 14 * SliceRows);
        Avx512F.Shuffle4x128(t7, t15, 0x88).Store(dst + 7 * SliceRows);
        Avx512F.Shuffle4x128(t7, t15, 0xDD).Store(dst + 15 * SliceRows);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<uint> Lo64(Vector512<uint> a, Vector512<uint> b) => Avx512F.UnpackLow(a.AsUInt64(), b.AsUInt64()).AsUInt32();

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<uint> Hi64(Vector512<uint> a, Vector512<uint> b) => Avx512F.UnpackHigh(a.AsUInt64(), b.AsUInt64()).AsUInt32();

    /// <summary>
    /// One Q8_0 block as 16 lanes of bf16 pairs (values 2t | 2t + 1 &lt;&lt; 16): fp32(d) · q, rounded by
    /// <see cref="RoundPairs"/>. A finite scale times an int8 is finite, so the NaN rule is needed only for a NaN or
    /// infinite scale (a broken file).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<uint> Pairs(byte* block)
    {
        var d = Vector512.Create(GgmlCpuDecode.HalfToSingle(block));
        var lo = Avx512F.ConvertToVector512Single(Avx512F.ConvertToVector512Int32(Vector128.Load((sbyte*)block + 2))) * d;
        var hi = Avx512F.ConvertToVector512Single(Avx512F.ConvertToVector512Int32(Vector128.Load((sbyte*)block + 18))) * d;
        return RoundPairs(lo, hi, (*(ushort*)block & 0x7C00) != 0x7C00);
    }

    /// <summary>
    /// 32 fp32 values (lo: 0–15, hi: 16–31) as 16 lanes of bf16 pairs: rounded to nearest even at bit 16
    /// (u + 0x7FFF + bit 16 of u) and the high halves gathered in order by one two-source word permute. Values that
    /// may be NaN (<paramref name="finite"/> false: a NaN or infinite scale) take <see cref="GgmlCpuDecode.ToBf16(Vector512{float})"/>'s NaN rule.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<uint> RoundPairs(Vector512<float> lo, Vector512<float> hi, bool finite)
    {
        if (!finite) return Vector512.Create(
            Avx512F.ConvertToVector256UInt16(GgmlCpuDecode.ToBf16(lo)), Avx512F.ConvertToVector256UInt16(GgmlCpuDecode.ToBf16(hi))).AsUInt32();
        var ul = lo.AsUInt32();
        var uh = hi.AsUInt32();
        var rl = ul + Vector512.Create(0x7FFFu) + ((ul >> 16) & Vector512<uint>.One);
        var rh = uh + Vector512.Create(0x7FFFu) + ((uh >> 16) & Vector512<uint>.One);
        return Avx512BW.PermuteVar32x16x2(rl.AsUInt16(), HighHalves, rh.AsUInt16()).AsUInt32();
    }

    /// <summary>Word indices 1, 3, …, 31 (first source) then 33, 35, …, 63 (second): the high half of every lane of both.</summary>
    private static readonly Vector512<ushort> HighHalves = Vector512.Create(
        (ushort)1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31, 33, 35, 37, 39, 41, 43, 45, 47, 49, 51, 53, 55, 57, 59, 61, 63);
}
