using System.Buffers.Binary;
using System.Text;
using PixArtSharp.Loading;
using PixArtSharp.Tests.Support;
using TorchSharp;
using static TorchSharp.torch;

namespace PixArtSharp.Tests.Loading;

/// <summary>
/// Every file here is crafted byte by byte (u64 LE header length, JSON header, data), independent of our writer,
/// so the reader is checked against the format itself.
/// </summary>
public class SafeTensorsValidationTests
{
    /// <summary>u64 LE length + header (padded with spaces to <paramref name="pad"/>) + data.</summary>
    internal static byte[] Craft(string header, byte[] data, ulong? claimedLength = null, int pad = 8)
    {
        var h = Encoding.UTF8.GetBytes(header).ToList();
        while (pad > 1 && h.Count % pad != 0) h.Add((byte)' ');
        var bytes = new byte[8 + h.Count + data.Length];
        BinaryPrimitives.WriteUInt64LittleEndian(bytes, claimedLength ?? (ulong)h.Count);
        h.ToArray().CopyTo(bytes, 8);
        data.CopyTo(bytes, 8 + h.Count);
        return bytes;
    }

    private static byte[] Floats(params float[] v)
    {
        var b = new byte[v.Length * 4];
        for (int i = 0; i < v.Length; i++) BinaryPrimitives.WriteSingleLittleEndian(b.AsSpan(i * 4), v[i]);
        return b;
    }

    // name, header, data, claimed header length (null = true length), tensor the message must name (null = none), expected phrase
    public static TheoryData<string, string, int, long, string?, string> BadFiles => new()
    {
        { "header-over-100MB", """{"t":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}""", 4, 100_000_001, null, "100000000" },
        { "header-huge-u64", """{}""", 0, long.MaxValue, null, "more than" },
        { "header-longer-than-file", """{"t":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}""", 4, 4096, null, "truncated" },
        { "header-empty", "", 0, -1, null, "does not start with '{'" },
        { "not-starting-with-brace", """ {"t":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}""", 4, -1, null, "does not start with '{'" },
        { "json-array", """[1, 2, 3]""", 0, -1, null, "does not start with '{'" },
        { "malformed-json", """{"blk.0.w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]""", 4, -1, null, "malformed" },
        { "trailing-garbage", """{"t":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}} x""", 4, -1, null, "malformed" },
        { "unknown-dtype", """{"blk.0.w":{"dtype":"F8_E4M3","shape":[4],"data_offsets":[0,4]}}""", 4, -1, "blk.0.w", "F8_E4M3" },
        { "dtype-lowercase", """{"blk.0.w":{"dtype":"f32","shape":[1],"data_offsets":[0,4]}}""", 4, -1, "blk.0.w", "'f32'" },
        { "dtype-missing", """{"blk.0.w":{"shape":[1],"data_offsets":[0,4]}}""", 4, -1, "blk.0.w", "no dtype" },
        { "negative-shape", """{"blk.0.w":{"dtype":"F32","shape":[-1,1],"data_offsets":[0,4]}}""", 4, -1, "blk.0.w", "non-negative integer" },
        { "fractional-shape", """{"blk.0.w":{"dtype":"F32","shape":[1.5],"data_offsets":[0,4]}}""", 4, -1, "blk.0.w", "non-negative integer" },
        { "string-shape", """{"blk.0.w":{"dtype":"F32","shape":["1"],"data_offsets":[0,4]}}""", 4, -1, "blk.0.w", "non-negative integer" },
        { "overflowing-shape", """{"blk.0.w":{"dtype":"F32","shape":[4294967296,4294967296,4],"data_offsets":[0,4]}}""", 4, -1, "blk.0.w", "overflows" },
        { "overflowing-bytes", """{"blk.0.w":{"dtype":"F64","shape":[2305843009213693952],"data_offsets":[0,4]}}""", 4, -1, "blk.0.w", "overflows" },
        { "shape-beyond-i64", """{"blk.0.w":{"dtype":"F32","shape":[99999999999999999999],"data_offsets":[0,4]}}""", 4, -1, "blk.0.w", "non-negative integer" },
        { "offsets-past-end", """{"blk.0.w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}""", 8, -1, "blk.0.w", "truncated" },
        { "offsets-huge", """{"blk.0.w":{"dtype":"F32","shape":[1],"data_offsets":[9223372036854775800,9223372036854775804]}}""", 4, -1, "blk.0.w", "truncated" },
        { "offsets-reversed", """{"blk.0.w":{"dtype":"F32","shape":[0],"data_offsets":[4,0]}}""", 4, -1, "blk.0.w", "data_offsets" },
        { "offsets-negative", """{"blk.0.w":{"dtype":"F32","shape":[1],"data_offsets":[-4,0]}}""", 4, -1, "blk.0.w", "data_offsets" },
        { "offsets-strings", """{"blk.0.w":{"dtype":"F32","shape":[1],"data_offsets":["0","4"]}}""", 4, -1, "blk.0.w", "data_offsets" },
        { "offsets-three", """{"blk.0.w":{"dtype":"F32","shape":[1],"data_offsets":[0,4,8]}}""", 4, -1, "blk.0.w", "data_offsets" },
        { "offsets-missing", """{"blk.0.w":{"dtype":"F32","shape":[1]}}""", 4, -1, "blk.0.w", "data_offsets" },
        { "overlapping", """{"a.w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b.w":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}""", 12, -1, "b.w", "overlaps tensor 'a.w'" },
        { "same-range-twice", """{"a.w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b.w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}""", 4, -1, "a.w", "overlaps" },
        { "hole", """{"a.w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b.w":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}}""", 12, -1, "b.w", "belong to no tensor" },
        { "hole-at-start", """{"b.w":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}""", 8, -1, "b.w", "belong to no tensor" },
        { "trailing-data", """{"a.w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}""", 8, -1, "a.w", "end at 4" },
        { "data-but-no-tensors", """{}""", 8, -1, null, "lists no tensors" },
        { "length-mismatch", """{"blk.0.w":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}""", 8, -1, "blk.0.w", "needs 12" },
        { "length-mismatch-dtype", """{"blk.0.w":{"dtype":"F16","shape":[4],"data_offsets":[0,4]}}""", 4, -1, "blk.0.w", "needs 8" },
        { "duplicate-key", """{"blk.0.w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"blk.0.w":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}""", 8, -1, "blk.0.w", "appears twice" },
        { "metadata-number", """{"__metadata__":{"format":1},"t":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}""", 4, -1, "format", "not a string" },
        { "metadata-array", """{"__metadata__":["pt"],"t":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}""", 4, -1, null, "__metadata__" },
        { "metadata-twice", """{"__metadata__":{},"__metadata__":{},"t":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}""", 4, -1, null, "__metadata__ appears twice" },
        { "entry-not-object", """{"blk.0.w":[0,4]}""", 4, -1, "blk.0.w", "not an object" },
        { "unknown-field", """{"blk.0.w":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"strides":[1]}}""", 4, -1, "blk.0.w", "strides" },
        { "truncated-data", """{"a.w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b.w":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}}""", 12, -1, "b.w", "truncated" },
        { "deep-json", "{\"t\":" + new string('[', 64) + new string(']', 64) + "}", 0, -1, null, "malformed" },
    };

    [Theory]
    [MemberData(nameof(BadFiles))]
    public void BadFileIsAClearErrorNamingFileAndTensor(string name, string header, int dataBytes, long claimed, string? tensor, string phrase)
    {
        using var dir = new TempDir();
        // Data bytes are a recognisable pattern; their values do not matter to validation.
        var data = Enumerable.Range(0, dataBytes).Select(i => (byte)i).ToArray();
        byte[] bytes = Craft(header, data, claimed switch { -1 => null, _ => (ulong)claimed });
        if (name == "header-empty") bytes = Craft("", [], 0, pad: 1);
        string path = dir.Write(name + ".safetensors", bytes);

        var e = Assert.Throws<WeightFileException>(() => SafeTensorsFile.Open(path));
        Assert.Contains(path, e.Message);
        Assert.Contains(phrase, e.Message);
        if (tensor != null) Assert.Contains($"'{tensor}'", e.Message);
    }

    [Theory]
    [InlineData(0)]
    [InlineData(5)]
    public void FileShorterThanTheLengthPrefixIsAClearError(int length)
    {
        using var dir = new TempDir();
        string path = dir.Write("short.safetensors", new byte[length]);
        var e = Assert.Throws<WeightFileException>(() => SafeTensorsFile.Open(path));
        Assert.Contains(path, e.Message);
        Assert.Contains("8-byte", e.Message);
    }

    [Fact]
    public void InvalidUtf8InTheHeaderIsAClearError()
    {
        using var dir = new TempDir();
        var header = Encoding.UTF8.GetBytes("""{"bad.é":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}""");
        // Turn the 2-byte é into an invalid lone continuation byte + 'x'.
        int at = Array.IndexOf(header, (byte)0xC3);
        header[at] = 0x80;
        var bytes = new byte[8 + header.Length + 4];
        BinaryPrimitives.WriteUInt64LittleEndian(bytes, (ulong)header.Length);
        header.CopyTo(bytes, 8);
        string path = dir.Write("utf8.safetensors", bytes);
        var e = Assert.Throws<WeightFileException>(() => SafeTensorsFile.Open(path));
        Assert.Contains(path, e.Message);
        Assert.Contains("UTF-8", e.Message);
    }

    [Fact]
    public void MissingFileIsModelNotFound()
    {
        using var dir = new TempDir();
        string path = dir.Path("nope.safetensors");
        var e = Assert.Throws<ModelNotFoundException>(() => SafeTensorsFile.Open(path));
        Assert.Contains(path, e.Message);
    }

    [Fact]
    public void HandCraftedFileReadsEveryDTypeWithExactValues()
    {
        // F32 [2] = {1.5, -2}; F16 [2] = {1.0 (0x3C00), -0.5 (0xB800)}; BF16 [2] = {1.0 (0x3F80), -3.0 (0xC040)};
        // I64 [2] = {-5, 2^40}; laid out by descending element size as the reference writer does.
        var data = new List<byte>();
        var i64 = new byte[16];
        BinaryPrimitives.WriteInt64LittleEndian(i64, -5);
        BinaryPrimitives.WriteInt64LittleEndian(i64.AsSpan(8), 1L << 40);
        data.AddRange(i64);                               // 0..16
        data.AddRange(Floats(1.5f, -2f));                 // 16..24
        data.AddRange(new byte[] { 0x00, 0x3C, 0x00, 0xB8 }); // 24..28
        data.AddRange(new byte[] { 0x80, 0x3F, 0x40, 0xC0 }); // 28..32
        string header = """
            {"__metadata__":{"format":"pt","note":"é"},
             "i":{"dtype":"I64","shape":[2],"data_offsets":[0,16]},
             "f":{"dtype":"F32","shape":[2,1],"data_offsets":[16,24]},
             "h":{"dtype":"F16","shape":[2],"data_offsets":[24,28]},
             "b":{"dtype":"BF16","shape":[1,2],"data_offsets":[28,32]},
             "e":{"dtype":"F32","shape":[0,3],"data_offsets":[32,32]}}
            """;
        using var dir = new TempDir();
        string path = dir.Write("all.safetensors", Craft(header, data.ToArray()));
        using var f = SafeTensorsFile.Open(path);
        Assert.Equal("pt", f.Metadata["format"]);
        Assert.Equal("é", f.Metadata["note"]);
        Assert.Equal(5, f.Tensors.Count);

        using var i = f.Load("i");
        Assert.Equal(ScalarType.Int64, i.dtype);
        Assert.Equal(new long[] { -5, 1L << 40 }, i.data<long>().ToArray());
        using var fl = f.Load("f");
        Assert.Equal(ScalarType.Float32, fl.dtype);
        Assert.Equal(new long[] { 2, 1 }, fl.shape);
        Assert.Equal(new[] { 1.5f, -2f }, fl.data<float>().ToArray());
        using var h = f.Load("h");
        Assert.Equal(ScalarType.Float16, h.dtype);
        using var h32 = h.to(ScalarType.Float32);
        Assert.Equal(new[] { 1f, -0.5f }, h32.data<float>().ToArray());
        using var b = f.Load("b");
        Assert.Equal(ScalarType.BFloat16, b.dtype);
        Assert.Equal(new long[] { 1, 2 }, b.shape);
        using var b32 = b.to(ScalarType.Float32);
        Assert.Equal(new[] { 1f, -3f }, b32.data<float>().ToArray());
        using var e = f.Load("e");
        Assert.Equal(new long[] { 0, 3 }, e.shape);
    }

    [Fact]
    public void NullMetadataIsAccepted()
    {
        using var dir = new TempDir();
        string path = dir.Write("m.safetensors", Craft("""{"__metadata__":null,"t":{"dtype":"F32","shape":[],"data_offsets":[0,4]}}""", Floats(7f)));
        using var f = SafeTensorsFile.Open(path);
        Assert.Empty(f.Metadata);
        using var t = f.Load("t");
        Assert.Empty(t.shape);
        Assert.Equal(7f, t.item<float>());
    }

    [Theory]
    [InlineData(ScalarType.Float32)]
    [InlineData(ScalarType.Float16)]
    [InlineData(ScalarType.BFloat16)]
    [InlineData(ScalarType.Int64)]
    public void WriterRoundTripIsExact(ScalarType dtype)
    {
        using var dir = new TempDir();
        using var src64 = torch.arange(-12, 12, dtype: ScalarType.Float64).reshape(4, 6).mul(0.75); // exact in every dtype tested
        using var src = dtype == ScalarType.Int64 ? torch.arange(-12L, 12L).reshape(4, 6).mul(1L << 35) : src64.to(dtype);
        using var other = torch.ones(3, dtype: ScalarType.Float16);
        string path = dir.Path("rt.safetensors");
        SafeTensorsWriter.Write(path, new Dictionary<string, Tensor> { ["w"] = src, ["z"] = other }, new Dictionary<string, string> { ["format"] = "pt" });
        Assert.Equal(new[] { "rt.safetensors" }, Directory.GetFiles(dir.Root).Select(Path.GetFileName)); // no temp file left
        using var f = SafeTensorsFile.Open(path);
        Assert.Equal("pt", f.Metadata["format"]);
        Assert.Equal(0, (f.DataStart - 8) % 8); // header padded to 8
        using var back = f.Load("w");
        Assert.Equal(dtype, back.dtype);
        Assert.Equal(src.shape, back.shape);
        Assert.True(torch.equal(src, back).all().item<bool>(), $"{dtype} round trip changed values");
    }

    [Fact]
    public void WriterRejectsReservedName()
    {
        using var dir = new TempDir();
        using var t = torch.ones(1);
        var e = Assert.Throws<ArgumentException>(() => SafeTensorsWriter.Write(dir.Path("x.safetensors"), new Dictionary<string, Tensor> { ["__metadata__"] = t }));
        Assert.Equal("tensors", e.ParamName);
        Assert.Empty(Directory.GetFiles(dir.Root));
    }

    [Fact]
    public void WriterFailureLeavesNothingBehind()
    {
        using var dir = new TempDir();
        Directory.CreateDirectory(dir.Path("taken.safetensors")); // the target is a folder: the final rename fails
        using var t = torch.ones(2);
        Assert.ThrowsAny<IOException>(() => SafeTensorsWriter.Write(dir.Path("taken.safetensors"), new Dictionary<string, Tensor> { ["t"] = t }));
        Assert.Empty(Directory.GetFiles(dir.Root));
    }

    [Fact]
    public void LoadIsAZeroCopyViewOfOneMapping()
    {
        using var dir = new TempDir();
        string path = dir.Path("z.safetensors");
        using (var a0 = torch.arange(0f, 1024f)) using (var b0 = torch.arange(0f, 16f))
            SafeTensorsWriter.Write(path, new Dictionary<string, Tensor> { ["a"] = a0, ["b"] = b0 });

        using var f = SafeTensorsFile.Open(path);
        using var a1 = f.Load("a");
        using var a2 = f.Load("a");
        using var b = f.Load("b");
        // The file is mapped into the process, and the tensors point into that mapping.
        var maps = File.ReadAllLines("/proc/self/maps").Where(l => l.EndsWith(path, StringComparison.Ordinal)).ToList();
        Assert.NotEmpty(maps);
        var ranges = maps.Select(l => l.Split(' ')[0].Split('-').Select(x => Convert.ToUInt64(x, 16)).ToArray()).ToList();
        foreach (var t in new[] { a1, a2, b })
        {
            ulong ptr = (ulong)t.storage<float>().data_ptr() + (ulong)(t.storage_offset() * 4);
            Assert.Contains(ranges, r => ptr >= r[0] && ptr < r[1]);
        }
        // One mapping per dtype: both tensors are views of the same storage, at their own offsets.
        Assert.Equal(a1.storage<float>().data_ptr(), b.storage<float>().data_ptr());
        Assert.Equal((f.DataStart + f.Tensors["a"].Begin) / 4, a1.storage_offset());
        // Two loads alias each other: a write through one is seen by the other...
        a1[3] = torch.tensor(-1f);
        Assert.Equal(-1f, a2[3].item<float>());
        // ...but never reaches the file (the mapping is private).
        using var g = SafeTensorsFile.Open(path);
        Assert.Equal(3f, BitConverter.ToSingle(File.ReadAllBytes(path), (int)(g.DataStart + g.Tensors["a"].Begin + 12)));
    }

    [Fact]
    public void TensorsOutliveTheFileObject()
    {
        using var dir = new TempDir();
        string path = dir.Path("o.safetensors");
        using (var a0 = torch.arange(0f, 8f)) SafeTensorsWriter.Write(path, new Dictionary<string, Tensor> { ["a"] = a0 });
        Tensor a;
        using (var f = SafeTensorsFile.Open(path)) a = f.Load("a");
        using (a) Assert.Equal(28f, a.sum().item<float>());
        var g = SafeTensorsFile.Open(path);
        g.Dispose();
        Assert.Throws<ObjectDisposedException>(() => g.Load("a"));
    }

    [Fact]
    public void MisalignedTensorIsCopiedWithCorrectValues()
    {
        // Header padded so the data starts at 2 mod 4 (legal): F32 at 0 and I64 at 4 are both misaligned.
        var data = new List<byte>(Floats(2.5f));
        var l = new byte[8];
        BinaryPrimitives.WriteInt64LittleEndian(l, -123456789012);
        data.AddRange(l);
        string header = """{"f":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"l":{"dtype":"I64","shape":[1],"data_offsets":[4,12]}}""";
        while ((8 + header.Length) % 4 != 2) header += " "; // data starts 2 bytes past a multiple of 4
        using var dir = new TempDir();
        string path = dir.Write("mis.safetensors", Craft(header, data.ToArray(), pad: 1));
        using var f = SafeTensorsFile.Open(path);
        Assert.NotEqual(0, f.DataStart % 4);
        using var t1 = f.Load("f");
        using var t2 = f.Load("f");
        Assert.Equal(2.5f, t1.item<float>());
        Assert.Equal(-123456789012L, f.Load("l").item<long>());
        // A copy, not a view: the two loads are independent.
        t1.fill_(9f);
        Assert.Equal(2.5f, t2.item<float>());
    }

    [Fact]
    public void FileChangedAfterOpenIsRefusedNotMapped()
    {
        using var dir = new TempDir();
        string path = dir.Path("c.safetensors");
        using (var a0 = torch.arange(0f, 64f)) SafeTensorsWriter.Write(path, new Dictionary<string, Tensor> { ["weights.a"] = a0 });
        using var f = SafeTensorsFile.Open(path);
        using (var fs = new FileStream(path, FileMode.Open)) fs.SetLength(fs.Length - 100);
        var e = Assert.Throws<WeightFileException>(() => f.Load("weights.a"));
        Assert.Contains(path, e.Message);
        Assert.Contains("'weights.a'", e.Message);
    }

    [Fact]
    public void UnknownTensorNameIsAClearError()
    {
        using var dir = new TempDir();
        string path = dir.Path("u.safetensors");
        using (var a0 = torch.ones(1)) SafeTensorsWriter.Write(path, new Dictionary<string, Tensor> { ["a"] = a0 });
        using var f = SafeTensorsFile.Open(path);
        var e = Assert.Throws<WeightFileException>(() => f.Load("missing.weight"));
        Assert.Contains(path, e.Message);
        Assert.Contains("'missing.weight'", e.Message);
    }

    [Fact]
    public void ReadsTheFixtureModelsAndTheirFormatMetadata()
    {
        foreach (var rel in new[] { new[] { "tiny-pixart", "transformer", "diffusion_pytorch_model.safetensors" }, new[] { "tiny-pixart-lcm", "text_encoder", "model.safetensors" } })
        {
            using var f = SafeTensorsFile.Open(Fixtures.Path(rel));
            Assert.Equal("pt", f.Metadata["format"]);
            Assert.All(f.Tensors.Values, t => Assert.Equal("F32", t.DType));
            foreach (var name in f.Tensors.Keys)
            {
                using var t = f.Load(name);
                Assert.Equal(f.Tensors[name].Shape, t.shape);
            }
        }
    }
}
