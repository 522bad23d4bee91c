using System.Text;
using PixArtSharp.Loading;
using PixArtSharp.Loading.Gguf;
using PixArtSharp.Models;
using PixArtSharp.Tests.Support;
using static TorchSharp.torch;

namespace PixArtSharp.Tests.Loading.Gguf;

/// <summary>
/// Bad GGUF files: each must be a <see cref="GgufFileException"/> naming the file and the problem, never another
/// exception, a huge allocation or a crash. Files are crafted byte by byte here (independent of GgufWriter).
/// </summary>
// Alone, after the parallel tests: the fuzz runs hundreds of models' forwards, and TorchSharp 0.107 leaves the Scalars
// it makes from C# numbers to the finalizer, which other threads' garbage collections can run during a native call
// that still uses one (seen once here as libtorch's "Unknown scalar type"; TorchSharp PR #1434 disposes them).
[Collection(SerialTests.Name)]
public class GgufValidationTests(Xunit.Abstractions.ITestOutputHelper output)
{
    /// <summary>A GGUF file built field by field; every field can be set to a wrong value.</summary>
    public sealed class Craft
    {
        public uint Magic = 0x46554747, Version = 3;
        public ulong? TensorCount, KvCount;
        public readonly List<(string Key, uint Type, byte[] Payload)> Kv = [];
        /// <summary>Raw key bytes for entry i, replacing its UTF-8 key (invalid UTF-8 tests).</summary>
        public readonly Dictionary<int, byte[]> RawKeys = [];
        public readonly List<(string Name, ulong[] Dims, uint Type, ulong Offset)> Tensors = [];
        public int Alignment = 32;
        public long DataBytes;

        public static byte[] Str(string s) { var b = Encoding.UTF8.GetBytes(s); return [.. BitConverter.GetBytes((ulong)b.Length), .. b]; }
        public Craft KvString(string k, string v) { Kv.Add((k, 8, Str(v))); return this; }
        public Craft KvU32(string k, uint v) { Kv.Add((k, 4, BitConverter.GetBytes(v))); return this; }

        public byte[] Build()
        {
            var ms = new MemoryStream();
            var w = new BinaryWriter(ms);
            w.Write(Magic); w.Write(Version);
            w.Write(TensorCount ?? (ulong)Tensors.Count);
            w.Write(KvCount ?? (ulong)Kv.Count);
            for (int i = 0; i < Kv.Count; i++)
            {
                var (k, t, p) = Kv[i];
                w.Write(RawKeys.TryGetValue(i, out var raw) ? [.. BitConverter.GetBytes((ulong)raw.Length), .. raw] : Str(k));
                w.Write(t); w.Write(p);
            }
            foreach (var (n, dims, t, off) in Tensors)
            {
                w.Write(Str(n)); w.Write((uint)dims.Length);
                foreach (var d in dims) w.Write(d);
                w.Write(t); w.Write(off);
            }
            while (ms.Length % Alignment != 0) w.Write((byte)0);
            w.Write(new byte[DataBytes]);
            return ms.ToArray();
        }
    }

    /// <summary>One valid F32 tensor [2, 32] (256 bytes), arch t5encoder.</summary>
    private static Craft Valid() => new Craft { DataBytes = 256 }.KvString("general.architecture", "t5encoder")
        .Also(c => c.Tensors.Add(("x", [32, 2], 0, 0)));

    public static TheoryData<string, Func<Craft>, string> BadHeaders => new()
    {
        { "not-gguf", () => new Craft { Magic = 0x7B000000 | 0x2020 }, "GGUF magic" },
        { "version-1", () => new Craft { Version = 1 }, "version 1" },
        { "version-7", () => new Craft { Version = 7 }, "version is 7" },
        { "big-endian", () => new Craft { Version = 0x03000000 }, "big-endian" },
        { "huge-tensor-count", () => new Craft { TensorCount = ulong.MaxValue }, "tensors, more than" },
        { "huge-kv-count", () => new Craft { KvCount = 1UL << 62 }, "metadata entries, more than" },
        { "huge-key-length", () => new Craft().Also(c => c.Kv.Add(("k", 8, BitConverter.GetBytes(ulong.MaxValue)))), "claims a string of" },
        { "huge-array", () => new Craft().Also(c => c.Kv.Add(("tokens", 9, [.. BitConverter.GetBytes(8u), .. BitConverter.GetBytes(1UL << 60)]))), "claims 1152921504606846976 elements" },
        { "array-of-unknown-type", () => new Craft().Also(c => c.Kv.Add(("a", 9, [.. BitConverter.GetBytes(77u), .. BitConverter.GetBytes(1UL)]))), "unknown value type 77" },
        { "unknown-value-type", () => new Craft().Also(c => c.Kv.Add(("k", 13, [1, 2, 3, 4]))), "unknown value type 13" },
        { "bool-2", () => new Craft().Also(c => c.Kv.Add(("b", 7, [2]))), "not 0 or 1" },
        { "bad-utf8-key", () => new Craft().KvU32("k", 0).Also(c => c.RawKeys[0] = [0x61, 0xC3, 0x28]), "not valid UTF-8" },
        { "duplicate-key", () => new Craft().KvU32("a", 1).KvU32("a", 2), "appears twice" },
        { "alignment-zero", () => Valid().KvU32("general.alignment", 0), "general.alignment is 0" },
        { "alignment-3", () => Valid().KvU32("general.alignment", 3), "not a power of two" },
        { "alignment-string", () => Valid().KvString("general.alignment", "32"), "not a UInt32" },
        { "five-dims", () => new Craft().Also(c => c.Tensors.Add(("x", [1, 1, 1, 1, 1], 0, 0))), "5 dimensions" },
        { "zero-dim", () => new Craft().Also(c => c.Tensors.Add(("x", [32, 0], 0, 0))), "dimension 1 = 0" },
        { "dims-overflow", () => new Craft().Also(c => c.Tensors.Add(("x", [1UL << 40, 1UL << 40], 0, 0))), "overflows" },
        { "unknown-ggml-type", () => new Craft().Also(c => c.Tensors.Add(("x", [32], 99, 0))), "type number 99" },
        { "row-not-whole-blocks", () => new Craft { DataBytes = 64 }.Also(c => c.Tensors.Add(("x", [16], 8, 0))), "not a multiple of the block size 32" },
        { "misaligned-offset", () => new Craft { DataBytes = 512 }.Also(c => c.Tensors.Add(("x", [32], 0, 4))), "not a multiple of the alignment 32" },
        { "tensor-past-end", () => new Craft { DataBytes = 100 }.Also(c => c.Tensors.Add(("x", [32, 2], 0, 0))), "ends past the end of the file" },
        { "offset-past-end", () => new Craft { DataBytes = 256 }.Also(c => c.Tensors.Add(("x", [32], 0, 1UL << 62))), "ends past the end of the file" },
        { "huge-offset", () => new Craft { DataBytes = 256 }.Also(c => c.Tensors.Add(("x", [32], 0, ulong.MaxValue - 31))), "data offset" },
        { "overlap", () => new Craft { DataBytes = 256 }.Also(c => { c.Tensors.Add(("a", [32], 0, 0)); c.Tensors.Add(("b", [32], 0, 96)); c.Tensors.Add(("c", [64], 0, 0)); }), "overlaps" },
        { "duplicate-tensor", () => new Craft { DataBytes = 256 }.Also(c => { c.Tensors.Add(("a", [32], 0, 0)); c.Tensors.Add(("a", [32], 0, 128)); }), "appears twice" },
        { "header-truncated", () => new Craft().KvString("general.name", "tiny").Also(c => c.KvCount = 3), "" },
    };

    [Theory]
    [MemberData(nameof(BadHeaders))]
    public void BadHeaderIsGgufFileException(string name, Func<Craft> craft, string phrase)
    {
        using var dir = new TempDir();
        string path = dir.Write(name + ".gguf", craft().Build());
        var e = Assert.Throws<GgufFileException>(() => { using var f = GgufFile.Open(path); });
        Assert.Contains(path, e.Message);
        Assert.Contains(phrase, e.Message);
        Assert.IsAssignableFrom<WeightFileException>(e);
    }

    /// <summary>A big (sparse) file whose claims fit its size but exceed the per-value caps: refused before allocating.</summary>
    [Theory]
    [InlineData("string", "more than the 67108864")]
    [InlineData("array", "more than the 16777216")]
    public void ValuesAboveTheCapsAreRefused(string kind, string phrase)
    {
        using var dir = new TempDir();
        var c = new Craft();
        if (kind == "string") c.Kv.Add(("k", 8, BitConverter.GetBytes((ulong)GgufFile.MaxStringBytes + 1)));
        else c.Kv.Add(("a", 9, [.. BitConverter.GetBytes(0u), .. BitConverter.GetBytes((ulong)GgufFile.MaxArrayLength + 1)]));
        string path = dir.Write(kind + ".gguf", c.Build());
        using (var fs = new FileStream(path, FileMode.Open)) fs.SetLength(80L << 20);   // sparse: nothing written
        Assert.Contains(phrase, Assert.Throws<GgufFileException>(() => GgufFile.Open(path)).Message);
    }

    [Fact]
    public void ShortAndForeignFilesAreNotGguf()
    {
        using var dir = new TempDir();
        foreach (var bytes in new[] { Array.Empty<byte>(), "GGU"u8.ToArray() })
        {
            string p = dir.Write($"short{bytes.Length}.gguf", bytes);
            Assert.Contains("too short", Assert.Throws<GgufFileException>(() => GgufFile.Open(p)).Message);
        }
        string st = Fixtures.Path("tiny-pixart", "text_encoder", "model.safetensors");
        var e = Assert.Throws<GgufFileException>(() => GgufFile.Open(st));
        Assert.Contains("GGUF magic", e.Message);
        Assert.Contains(".gguf", e.Message);
        Assert.Throws<ModelNotFoundException>(() => GgufFile.Open(dir.Path("absent.gguf")));
    }

    [Fact]
    public void UnsupportedTypeIsNamedWithTheSupportedList()
    {
        using var dir = new TempDir();
        // token_embd as IQ2_XXS [256, 2] (2 blocks of 66 bytes).
        var c = new Craft { DataBytes = 160 }.KvString("general.architecture", "t5encoder");
        c.Tensors.Add(("token_embd.weight", [256, 2], (uint)GgmlType.IQ2_XXS, 0));
        string path = dir.Write("iq.gguf", c.Build());
        using (var f = GgufFile.Open(path))
        {
            var le = Assert.Throws<GgufFileException>(() => f.LoadTensor("token_embd.weight"));
            Assert.Contains("IQ2_XXS", le.Message);
            Assert.Contains("Q8_0", le.Message);
        }
        var e = Assert.Throws<GgufFileException>(() => T5EncoderModel.FromGguf(path, ScalarType.Float32));
        Assert.Contains("'token_embd.weight' is IQ2_XXS", e.Message);
        Assert.Contains("supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K", e.Message);
    }

    // ---- T5-level errors: a tiny T5 written with edits ----

    private static readonly T5Config Tiny = new() { VocabSize = 50, DModel = 64, DKv = 16, DFf = 96, NumLayers = 2, NumHeads = 4, FeedForwardProj = "gated-gelu" };

    /// <summary>The tiny T5 as WriteT5 would write it, with <paramref name="edit"/> applied to the metadata/tensor list.</summary>
    private static string WriteT5(TempDir dir, string name, Action<List<(string Name, long[] Shape)>, GgufWriter>? edit = null, string arch = "t5encoder")
    {
        var w = new GgufWriter().Add("general.architecture", arch)
            .Add($"{arch}.embedding_length", 64u).Add($"{arch}.feed_forward_length", 96u).Add($"{arch}.block_count", 2u)
            .Add($"{arch}.attention.head_count", 4u).Add($"{arch}.attention.key_length", 16u)
            .Add($"{arch}.attention.layer_norm_epsilon", 1e-6f).Add($"{arch}.attention.relative_buckets_count", 32u);
        var tensors = GgufT5.ExpectedTensors(Tiny).ToList();
        edit?.Invoke(tensors, w);
        foreach (var (n, shape) in tensors)
            w.AddTensor(n, shape, shape.Length == 2 && shape[1] % 32 == 0 && !n.Contains("rel_b") ? GgmlType.Q8_0 : GgmlType.F32, () => randn(shape).mul_(0.1));
        string path = dir.Path(name + ".gguf");
        w.Write(path);
        return path;
    }

    // The edit is typed object: GgufWriter is internal and a theory's data and method are public.
    private static object Edit(Action<List<(string Name, long[] Shape)>, GgufWriter> edit) => edit;

    public static TheoryData<string, object?, string, string> BadT5s => new()
    {
        { "llama", null, "llama", "its architecture is 'llama', not a T5 encoder" },
        { "missing-tensor", Edit((t, _) => t.RemoveAll(x => x.Name == "enc.blk.1.ffn_down.weight")), "t5encoder", "'enc.blk.1.ffn_down.weight'" },
        { "missing-embedding", Edit((t, _) => t.RemoveAll(x => x.Name == "token_embd.weight")), "t5encoder", "no 2-D tensor 'token_embd.weight'" },
        { "extra-tensor", Edit((t, _) => t.Add(("enc.blk.1.attn_rel_b.weight", [32, 4]))), "t5encoder", "do not belong" },
        { "shape-mismatch", Edit((_, w) => w.Add("t5encoder.feed_forward_length", 128u)), "t5encoder", "but its metadata implies [128, 64]" },
        { "bad-head-count", Edit((_, w) => w.Add("t5encoder.attention.head_count", 0u)), "t5encoder", "head_count is 0" },
        { "bad-epsilon", Edit((_, w) => w.Add("t5encoder.attention.layer_norm_epsilon", -1f)), "t5encoder", "layer_norm_epsilon is -1" },
        { "huge-block-count", Edit((_, w) => w.Add("t5encoder.block_count", 1u << 30)), "t5encoder", "block_count is 1073741824" },
        { "bad-buckets", Edit((_, w) => w.Add("t5encoder.attention.relative_buckets_count", 3u)), "t5encoder", "relative_attention_num_buckets" },
    };

    [Theory]
    [MemberData(nameof(BadT5s))]
    public void BadT5IsGgufFileException(string name, object? editObject, string arch, string phrase)
    {
        var edit = (Action<List<(string Name, long[] Shape)>, GgufWriter>?)editObject;
        using var dir = new TempDir();
        string path = WriteT5(dir, name, edit, arch);
        var e = Assert.Throws<GgufFileException>(() => T5EncoderModel.FromGguf(path, ScalarType.Float32));
        Assert.Contains(path, e.Message);
        Assert.Contains(phrase, e.Message);
    }

    [Fact]
    public void NoArchitectureIsNamed()
    {
        using var dir = new TempDir();
        string path = dir.Write("noarch.gguf", new Craft().Build());
        Assert.Contains("no general.architecture", Assert.Throws<GgufFileException>(() => T5EncoderModel.FromGguf(path, ScalarType.Float32)).Message);
    }

    [Fact]
    public void FullT5KeepsTheEncoderAndIgnoresTheDecoder()
    {
        using var dir = new TempDir();
        string path = WriteT5(dir, "full", (t, _) => { t.Add(("dec.blk.0.attn_q.weight", [64, 64])); t.Add(("output.weight", [50, 64])); }, arch: "t5");
        using var model = T5EncoderModel.FromGguf(path, ScalarType.Float32);
        Assert.Equal(2, model.config.NumLayers);
        using var ids = tensor(new long[,] { { 1, 2, 3 } });
        using var mask = ones(1, 3);
        using var y = model.forward(ids, mask);
        Assert.False(y.isnan().any().item<bool>());
    }

    // ---- fuzzing the real fixture's header ----

    /// <summary>Truncated at every byte of the header (and a stride through the data): always GgufFileException.</summary>
    [Fact]
    public void EveryTruncationIsGgufFileException()
    {
        byte[] file = File.ReadAllBytes(GgufT5Tests.TinyGguf);
        long dataStart;
        using (var f = GgufFile.Open(GgufT5Tests.TinyGguf)) dataStart = f.DataStart;
        using var dir = new TempDir();
        string path = dir.Path("cut.gguf");
        var cuts = Enumerable.Range(0, (int)dataStart + 1).Concat(Enumerable.Range(0, 40).Select(i => (int)dataStart + 1 + i * 104729)).Where(n => n < file.Length);
        foreach (int n in cuts)
        {
            File.WriteAllBytes(path, file[..n]);
            try { using var g = GgufFile.Open(path); Assert.Fail($"a file cut at byte {n} of {file.Length} was accepted"); }
            catch (GgufFileException) { }
        }
    }

    /// <summary>
    /// Random byte flips in the header: opening, reading the config and building and running the model either works
    /// (a flip in a name or a float can leave a valid file) or is a GgufFileException; nothing else.
    /// </summary>
    [Fact]
    public void RandomHeaderFlipsNeverThrowAnythingElse()
    {
        byte[] file = File.ReadAllBytes(GgufT5Tests.TinyGguf);
        long dataStart;
        using (var f = GgufFile.Open(GgufT5Tests.TinyGguf)) dataStart = f.DataStart;
        using var dir = new TempDir();
        var rng = new Random(1234);
        using var ids = tensor(new long[,] { { 0, 1, 31999, 32127 } });
        using var mask = ones(1, 4);
        int opened = 0, rejected = 0;
        for (int i = 0; i < 400; i++)
        {
            var bytes = (byte[])file.Clone();
            int flips = 1 + rng.Next(3);
            for (int k = 0; k < flips; k++)
            {
                int at = rng.Next((int)dataStart);
                bytes[at] = rng.Next(3) == 0 ? (byte)0xFF : (byte)(bytes[at] ^ (1 << rng.Next(8)));
            }
            string path = dir.Path($"flip{i}.gguf");
            File.WriteAllBytes(path, bytes);
            try
            {
                using var model = T5EncoderModel.FromGguf(path, ScalarType.Float32);
                if (model.config.VocabSize > 32127) { using var y = model.forward(ids, mask); }
                opened++;
            }
            catch (GgufFileException) { rejected++; }
            File.Delete(path);
        }
        output.WriteLine($"400 flipped headers: {opened} opened and ran, {rejected} GgufFileException");
        Assert.True(rejected > 100, $"only {rejected} of 400 flipped files were rejected");
        Assert.True(opened > 0 || rejected == 400);
    }
}

internal static class CraftExtensions
{
    public static T Also<T>(this T x, Action<T> act) { act(x); return x; }
}
