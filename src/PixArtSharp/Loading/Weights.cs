using PixArtSharp.Loading.Gguf;
using TorchSharp;
using static TorchSharp.torch;

namespace PixArtSharp.Loading;

/// <summary>
/// Hands out a model's weights by checkpoint key, the way candle's VarBuilder does: each module asks for its
/// own tensors (<c>w.Sub("attn1").Get("to_q.weight", inner, dim)</c>) with the shape its config implies, so a
/// missing or mis-shaped weight is an error naming the key, and <see cref="CheckAllUsed"/> names any weight the
/// model did not ask for. Tensors in the file's dtype on the CPU are handed out as zero-copy views of the
/// memory-mapped file; anything else is converted once.
/// </summary>
public sealed class Weights : IDisposable
{
    private sealed class Source(string description, Func<string, bool> contains, Func<string, long[]?> shapeOf,
                                Func<string, long[], Tensor> load, IEnumerable<string> keys, Action dispose,
                                Func<string, ScalarType, QuantizedTensor?>? quantized = null)
    {
        /// <summary>GGUF only: the weight still encoded, or null where it is stored in the asked dtype already.</summary>
        public readonly Func<string, ScalarType, QuantizedTensor?>? Quantized = quantized;
        public readonly string Description = description;
        public readonly Func<string, bool> Contains = contains;
        public readonly Func<string, long[]?> ShapeOf = shapeOf;
        public readonly Func<string, long[], Tensor> Load = load;
        public readonly IEnumerable<string> Keys = keys;
        public readonly Action Dispose = dispose;
        public readonly HashSet<string> Used = new(StringComparer.Ordinal);
    }

    private readonly Source _source;
    private readonly string _prefix;

    /// <summary>The dtype floating-point weights are held in (fp32 by default; bf16 or fp16 to save memory).</summary>
    public ScalarType DType { get; }
    public Device Device { get; }
    public string Description => _source.Description;

    private Weights(Source source, string prefix, ScalarType dtype, Device device)
    {
        _source = source;
        _prefix = prefix;
        DType = dtype;
        Device = device;
    }

    /// <summary>Weights from one or more safetensors files (a sharded checkpoint is several).</summary>
    /// <param name="weightMap">For a sharded checkpoint, its index's key → shard path: the shards must hold
    /// exactly those keys, each in the shard named for it.</param>
    /// <param name="weightMapSource">The index file, for error messages.</param>
    public static Weights FromFiles(IReadOnlyList<string> files, ScalarType dtype, Device? device = null, string? description = null,
                                    IReadOnlyDictionary<string, string>? weightMap = null, string? weightMapSource = null)
    {
        if (files.Count == 0)
            throw new ArgumentException("At least one weight file is needed.", nameof(files));
        var opened = new List<SafeTensorsFile>();
        var where = new Dictionary<string, SafeTensorsFile>(StringComparer.Ordinal);
        try
        {
            foreach (var f in files)
            {
                var st = SafeTensorsFile.Open(f);
                opened.Add(st);
                foreach (var name in st.Tensors.Keys)
                {
                    if (where.TryGetValue(name, out var other))
                        throw new WeightFileException($"Tensor '{name}' is stored twice, in {other.FilePath} and {f}. Download the model again.");
                    where[name] = st;
                }
            }
            if (weightMap != null)
                CheckAgainstIndex(where, weightMap, weightMapSource ?? "the shard index");
        }
        catch
        {
            foreach (var o in opened) o.Dispose();
            throw;
        }
        var source = new Source(
            description ?? string.Join(", ", files),
            where.ContainsKey,
            name => where[name].Tensors[name].Shape,
            (name, _) => where[name].Load(name),
            where.Keys,
            () => { foreach (var o in opened) o.Dispose(); });
        return new Weights(source, "", dtype, device ?? CPU);
    }

    private static void CheckAgainstIndex(Dictionary<string, SafeTensorsFile> where, IReadOnlyDictionary<string, string> weightMap, string index)
    {
        foreach (var (key, shard) in weightMap)
        {
            if (!where.TryGetValue(key, out var st))
                throw new WeightFileException($"{index} lists weight '{key}' in {shard}, but no shard holds it. The download is incomplete or mixed; download the model again.");
            if (!string.Equals(Path.GetFullPath(st.FilePath), Path.GetFullPath(shard), StringComparison.Ordinal))
                throw new WeightFileException($"{index} lists weight '{key}' in {shard}, but it is in {st.FilePath}. The shards do not belong to this index; download the model again.");
        }
        foreach (var (key, st) in where)
            if (!weightMap.ContainsKey(key))
                throw new WeightFileException($"{st.FilePath} holds weight '{key}', which {index} does not list. The shards do not belong to this index; download the model again.");
    }

    /// <summary>
    /// Weights from a GGUF file, by checkpoint key (<paramref name="keyToTensor"/>: key → GGUF tensor name). <see cref="Get(string, long[])"/>
    /// decodes a tensor once (F32/F16/BF16 tensors are zero-copy views of the mapping); <see cref="TryGetQuantized"/>
    /// hands it out still encoded, for layers that decode their weight when they run.
    /// </summary>
    public static Weights FromGguf(GgufFile file, IReadOnlyDictionary<string, string> keyToTensor, ScalarType dtype, Device? device = null)
    {
        var source = new Source(
            file.FilePath,
            keyToTensor.ContainsKey,
            key => file.Tensors[keyToTensor[key]].Shape,
            (key, _) =>
            {
                using var q = file.LoadTensor(keyToTensor[key]);
                // Float types as stored (a view; Get converts if needed), block types decoded to fp32.
                return q.Type is GgmlType.F32 or GgmlType.F16 or GgmlType.BF16
                    ? q.Dequantize(NativeType(q.Type))
                    : q.Dequantize(ScalarType.Float32);
            },
            keyToTensor.Keys,
            file.Dispose,
            (key, want) =>
            {
                var info = file.Tensors[keyToTensor[key]];
                bool stored = info.Type is GgmlType.F32 or GgmlType.F16 or GgmlType.BF16 && NativeType(info.Type) == want;
                return stored ? null : file.LoadTensor(info.Name);
            });
        return new Weights(source, "", dtype, device ?? CPU);
    }

    private static ScalarType NativeType(GgmlType t) => t switch
    {
        GgmlType.F16 => ScalarType.Float16,
        GgmlType.BF16 => ScalarType.BFloat16,
        _ => ScalarType.Float32,
    };

    /// <summary>Weights from tensors already in memory (tests, converters).</summary>
    public static Weights FromTensors(IReadOnlyDictionary<string, Tensor> tensors, ScalarType dtype, Device? device = null, string description = "in-memory weights")
    {
        var source = new Source(description, tensors.ContainsKey, n => tensors[n].shape,
            (n, _) => tensors[n].alias(), tensors.Keys, () => { });
        return new Weights(source, "", dtype, device ?? CPU);
    }

    /// <summary>
    /// Seeded random weights of whatever shape the model asks for: the full-size architectures can be run and
    /// timed without downloading anything. Norm-like weights (1-D, named *weight of norms) get 1 + noise so
    /// activations keep a sane scale.
    /// </summary>
    /// <param name="created">Optional: sees each weight as generated (key, tensor in <paramref name="dtype"/>), in
    /// request order. The tensor is the one handed to the model (or converted and freed by <see cref="Get(string, ScalarType, long[])"/>):
    /// keep it with <c>t.alias()</c>. <c>pixart bench --save-random-model</c> writes the weights from here.</param>
    public static Weights Random(long seed, ScalarType dtype, Device? device = null, double std = 0.02, Action<string, Tensor>? created = null)
    {
        var gen = new Generator((ulong)seed);
        var seen = new HashSet<string>(StringComparer.Ordinal);
        var source = new Source($"random weights (seed {seed})", _ => true, _ => null,
            (name, shape) =>
            {
                seen.Add(name);
                using var scope = NewDisposeScope();
                var t = torch.randn(shape, ScalarType.Float32, generator: gen).mul_(std);
                if (shape.Length == 1 && (name.EndsWith("norm.weight") || name.Contains("norm") || name.EndsWith("layer_norm.weight")) && name.EndsWith("weight"))
                    t.add_(1.0);
                var result = t.to(dtype).MoveToOuterDisposeScope();
                created?.Invoke(name, result);
                return result;
            },
            seen, () => gen.Dispose());
        return new Weights(source, "", dtype, device ?? CPU);
    }

    public Weights Sub(string name) => new(_source, Join(name), DType, Device);

    public bool Contains(string name) => _source.Contains(Join(name));

    /// <summary>A floating weight in the held dtype, checked against the shape the config implies.</summary>
    public Tensor Get(string name, params long[] shape) => Get(name, DType, shape);

    /// <summary>A weight kept in fp32 whatever the held dtype (used where reduced precision is unsafe).</summary>
    public Tensor GetFloat32(string name, params long[] shape) => Get(name, ScalarType.Float32, shape);

    public Tensor Get(string name, ScalarType dtype, long[] shape)
    {
        string key = Join(name);
        if (!_source.Contains(key))
            throw new WeightFileException($"{_source.Description}: weight '{key}' is missing. The config does not fit these weights, or the file is incomplete; download the model again.");
        if (_source.ShapeOf(key) is { } have)
        {
            if (!have.SequenceEqual(shape))
                throw new WeightFileException($"{_source.Description}: weight '{key}' has shape [{string.Join(", ", have)}] but the config implies [{string.Join(", ", shape)}]. The config.json does not fit these weights.");
        }
        _source.Used.Add(key);
        var raw = _source.Load(key, shape);
        // Device has no value equality: compare type and index. The zero-copy view is handed out as it is.
        if (raw.dtype == dtype && raw.device_type == Device.type && (Device.index < 0 || raw.device_index == Device.index))
            return raw;
        using (raw) return raw.to(dtype, Device);
    }

    /// <summary>
    /// A weight to be decoded when used, on <see cref="Device"/>: the GGUF tensor still encoded, unless the source is not
    /// GGUF or stores it in <paramref name="dtype"/> already (then null: use <see cref="Get(string, ScalarType, long[])"/>,
    /// which hands that out as a view). Checked against <paramref name="shape"/> and marked used like Get.
    /// </summary>
    public QuantizedTensor? TryGetQuantized(string name, ScalarType dtype, long[] shape)
    {
        if (_source.Quantized is null) return null;
        string key = Join(name);
        if (!_source.Contains(key))
            throw new WeightFileException($"{_source.Description}: weight '{key}' is missing. The config does not fit these weights, or the file is incomplete; download the model again.");
        if (_source.ShapeOf(key) is { } have && !have.SequenceEqual(shape))
            throw new WeightFileException($"{_source.Description}: weight '{key}' has shape [{string.Join(", ", have)}] but the config implies [{string.Join(", ", shape)}]. The config does not fit these weights.");
        var q = _source.Quantized(key, dtype);
        if (q is null) return null;
        _source.Used.Add(key);
        using (q) return q.To(Device);
    }

    /// <summary>Every stored weight must have been asked for: an unexpected one means the config is wrong.</summary>
    public void CheckAllUsed()
    {
        var unused = _source.Keys.Where(k => !_source.Used.Contains(k)).OrderBy(k => k, StringComparer.Ordinal).ToList();
        if (unused.Count > 0)
            throw new WeightFileException($"{_source.Description}: {unused.Count} weight(s) do not belong to the model the config describes, e.g. '{string.Join("', '", unused.Take(5))}'. The config.json does not fit these weights.");
    }

    public IReadOnlyCollection<string> UsedKeys => _source.Used;

    private string Join(string name) => _prefix.Length == 0 ? name : _prefix + "." + name;

    public void Dispose()
    {
        if (_prefix.Length == 0) _source.Dispose();
    }
}
