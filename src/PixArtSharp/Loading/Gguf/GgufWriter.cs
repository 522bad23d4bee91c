using System.Text;
using PixArtSharp.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace PixArtSharp.Loading.Gguf;

/// <summary>
/// Writes GGUF v3 files (little endian, <c>general.alignment</c> 32): metadata, tensor table, then each tensor's
/// encoded bytes at a multiple of the alignment. Tensors are produced and encoded one at a time while writing (a
/// full-size T5 is never held whole), in chunks of rows. For tests and the bench.
/// </summary>
internal sealed class GgufWriter
{
    private readonly List<(string Key, GgufValueType Type, object Value, GgufValueType? ElementType)> _kv = [];
    private readonly List<(string Name, long[] Shape, GgmlType Type, Func<Tensor> Values)> _tensors = [];
    public int Alignment { get; }

    public GgufWriter(int alignment = GgufFile.DefaultAlignment)
    {
        if (alignment <= 0 || (alignment & (alignment - 1)) != 0)
            throw new ArgumentException("The alignment must be a power of two.", nameof(alignment));
        Alignment = alignment;
        Add("general.alignment", GgufValueType.UInt32, (uint)alignment);
    }

    /// <summary>A metadata value: byte, sbyte, ushort, short, uint, int, float, bool, string, ulong, long, double
    /// (as <paramref name="type"/> says), or for Array an <c>object[]</c> of <paramref name="elementType"/>.</summary>
    public GgufWriter Add(string key, GgufValueType type, object value, GgufValueType? elementType = null)
    {
        _kv.RemoveAll(kv => kv.Key == key);
        _kv.Add((key, type, value, elementType));
        return this;
    }

    public GgufWriter Add(string key, string value) => Add(key, GgufValueType.String, value);
    public GgufWriter Add(string key, uint value) => Add(key, GgufValueType.UInt32, value);
    public GgufWriter Add(string key, float value) => Add(key, GgufValueType.Float32, value);

    /// <summary>A tensor of torch shape <paramref name="shape"/> (outermost first), encoded as <paramref name="type"/>
    /// from the float values <paramref name="values"/> returns when the writer reaches it (disposed after).</summary>
    public GgufWriter AddTensor(string name, long[] shape, GgmlType type, Func<Tensor> values)
    {
        if (!GgmlQuantize.Supported.Contains(type))
            throw new NotSupportedException($"The GGUF writer does not encode {GgmlTypes.Name(type)}; it writes {string.Join(", ", GgmlQuantize.Supported)}.");
        if (shape.Length is 0 or > GgufFile.MaxDims || shape[^1] % GgmlTypes.BlockSize(type) != 0)
            throw new ArgumentException($"Tensor '{name}' [{string.Join(", ", shape)}]: 1 to 4 dimensions, the innermost a multiple of {GgmlTypes.BlockSize(type)} for {type}.");
        _tensors.Add((name, shape, type, values));
        return this;
    }

    public void Write(string path)
    {
        long Pad(long n) => (n + Alignment - 1) / Alignment * Alignment;
        using var fs = new FileStream(path, FileMode.Create, FileAccess.Write, FileShare.None, 1 << 20);
        using var w = new BinaryWriter(fs, Encoding.UTF8, leaveOpen: true);
        w.Write(GgufFile.Magic);
        w.Write(3u);
        w.Write((ulong)_tensors.Count);
        w.Write((ulong)_kv.Count);
        foreach (var (key, type, value, et) in _kv)
        {
            WriteString(w, key);
            w.Write((uint)type);
            WriteValue(w, type, value, et);
        }
        long offset = 0;
        foreach (var (name, shape, type, _) in _tensors)
        {
            WriteString(w, name);
            w.Write((uint)shape.Length);
            foreach (var d in shape.Reverse()) w.Write((ulong)d);      // GGUF: innermost first
            w.Write((uint)type);
            w.Write((ulong)offset);
            offset = Pad(offset + GgmlTypes.ByteLength(type, shape.Aggregate(1L, (a, b) => a * b)));
        }
        w.Flush();
        PadTo(fs, Pad(fs.Position));
        long dataStart = fs.Position;
        foreach (var (name, shape, type, values) in _tensors)
        {
            long numel = shape.Aggregate(1L, (a, b) => a * b);
            using (var t = values())
            {
                if (!t.shape.SequenceEqual(shape))
                    throw new ArgumentException($"Tensor '{name}': the values have shape [{string.Join(", ", t.shape)}], not [{string.Join(", ", shape)}].");
                WriteEncoded(fs, t, type);
            }
            PadTo(fs, dataStart + Pad(fs.Position - dataStart));
        }
    }

    /// <summary>Encodes in chunks of whole rows (≈ 16 M values), in parallel over rows.</summary>
    private static void WriteEncoded(Stream s, Tensor t, GgmlType type)
    {
        long cols = t.shape[^1];
        long rows = t.numel() / Math.Max(cols, 1);
        long rowBytes = GgmlTypes.ByteLength(type, cols);
        long chunk = Math.Max(1, (16L << 20) / Math.Max(cols, 1));
        using var flat = t.reshape(rows, cols);
        for (long r0 = 0; r0 < rows; r0 += chunk)
        {
            long n = Math.Min(chunk, rows - r0);
            using var part = flat.narrow(0, r0, n).to(ScalarType.Float32, CPU).contiguous();
            var values = part.data<float>().ToArray();
            var bytes = new byte[n * rowBytes];
            Parallel.For(0, n, i => GgmlQuantize.Encode(type, values.AsSpan((int)(i * cols), (int)cols), bytes.AsSpan((int)(i * rowBytes), (int)rowBytes)));
            s.Write(bytes);
        }
    }

    private static void PadTo(Stream s, long position)
    {
        while (s.Position < position) s.WriteByte(0);
    }

    private static void WriteString(BinaryWriter w, string s)
    {
        var b = Encoding.UTF8.GetBytes(s);
        w.Write((ulong)b.Length);
        w.Write(b);
    }

    private static void WriteValue(BinaryWriter w, GgufValueType type, object v, GgufValueType? et)
    {
        switch (type)
        {
            case GgufValueType.UInt8: w.Write((byte)v); break;
            case GgufValueType.Int8: w.Write((sbyte)v); break;
            case GgufValueType.UInt16: w.Write((ushort)v); break;
            case GgufValueType.Int16: w.Write((short)v); break;
            case GgufValueType.UInt32: w.Write((uint)v); break;
            case GgufValueType.Int32: w.Write((int)v); break;
            case GgufValueType.Float32: w.Write((float)v); break;
            case GgufValueType.Bool: w.Write((bool)v ? (byte)1 : (byte)0); break;
            case GgufValueType.String: WriteString(w, (string)v); break;
            case GgufValueType.UInt64: w.Write((ulong)v); break;
            case GgufValueType.Int64: w.Write((long)v); break;
            case GgufValueType.Float64: w.Write((double)v); break;
            case GgufValueType.Array:
                var items = (object[])v;
                w.Write((uint)et!.Value);
                w.Write((ulong)items.Length);
                foreach (var item in items) WriteValue(w, et.Value, item, null);
                break;
            default: throw new ArgumentException($"Unknown GGUF value type {type}.");
        }
    }

    /// <summary>llama.cpp's general.file_type (enum llama_ftype) for a file whose matrices are <paramref name="type"/>.</summary>
    private static uint? FileType(GgmlType type) => type switch
    {
        GgmlType.F32 => 0,
        GgmlType.F16 => 1,
        GgmlType.Q8_0 => 7,
        GgmlType.Q4_K => 15,
        GgmlType.Q5_K => 17,
        GgmlType.BF16 => 32,
        _ => null,
    };

    /// <summary>
    /// Writes a T5 encoder as llama.cpp's <c>t5encoder</c> GGUF (the layout <see cref="T5EncoderModel.FromGguf"/> and
    /// ComfyUI-GGUF read): <paramref name="weights"/> gives each weight by transformers' key (e.g.
    /// <c>encoder.block.0.layer.0.SelfAttention.q.weight</c>; called once per tensor, the result disposed after
    /// writing). Matrices and the embedding are stored as <paramref name="type"/> (F16 where a row is not a whole
    /// number of blocks), the norms and the relative attention bias as F32, as llama.cpp does. The token embedding is
    /// <paramref name="embeddingType"/> when given (llama.cpp files often keep it at another type), else <paramref name="type"/>.
    /// </summary>
    public static void WriteT5(string path, T5Config config, Func<string, Tensor> weights, GgmlType type,
                               GgmlType? embeddingType = null, string name = "pixartsharp-t5")
    {
        ArgumentNullException.ThrowIfNull(weights);
        WriteT5(path, config, (key, _) => weights(key), type, embeddingType, name);
    }

    /// <summary>As above; <paramref name="weights"/> also gets the torch shape the config implies, so random
    /// weights can be generated per tensor (the bench: <c>(key, shape) => torch.randn(shape, generator: g).mul_(0.02)</c>).</summary>
    public static void WriteT5(string path, T5Config config, Func<string, long[], Tensor> weights, GgmlType type,
                               GgmlType? embeddingType = null, string name = "pixartsharp-t5")
    {
        ArgumentNullException.ThrowIfNull(config);
        config.Validate();
        const string a = "t5encoder";
        var w = new GgufWriter()
            .Add("general.architecture", a)
            .Add("general.name", name);
        if (FileType(type) is { } ft) w.Add("general.file_type", ft);
        w.Add($"{a}.context_length", 512u)
         .Add($"{a}.embedding_length", (uint)config.DModel)
         .Add($"{a}.feed_forward_length", (uint)config.DFf)
         .Add($"{a}.block_count", (uint)config.NumLayers)
         .Add($"{a}.attention.head_count", (uint)config.NumHeads)
         .Add($"{a}.attention.key_length", (uint)config.DKv)
         .Add($"{a}.attention.value_length", (uint)config.DKv)
         .Add($"{a}.attention.layer_norm_epsilon", (float)config.LayerNormEpsilon)
         .Add($"{a}.attention.relative_buckets_count", (uint)config.RelativeAttentionNumBuckets);
        bool gated = config.IsGatedActResolved;
        foreach (var (gname, shape) in GgufT5.ExpectedTensors(config))
        {
            string key = GgufT5.ToTransformersName(gname, gated);
            var want = gname == "token_embd.weight" ? embeddingType ?? type : type;
            var t = shape.Length == 2 && !gname.Contains("attn_rel_b", StringComparison.Ordinal)
                ? (shape[1] % GgmlTypes.BlockSize(want) == 0 ? want : GgmlType.F16)
                : GgmlType.F32;
            w.AddTensor(gname, shape, t, () => weights(key, shape));
        }
        w.Write(path);
    }
}
