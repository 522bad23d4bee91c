using PixArtSharp.Loading.Gguf;
using TorchSharp;
using static TorchSharp.torch;

namespace PixArtSharp.Loading;

/// <summary>How weights are read from safetensors files.</summary>
internal sealed record WeightLoadOptions
{
    /// <summary>Zero-copy where possible: tensors already in the compute dtype stay views of the mapped file.</summary>
    public static readonly WeightLoadOptions Default = new();

    /// <summary>Every tensor copied into process memory at load: what a long-lived process (the server) uses.</summary>
    public static readonly WeightLoadOptions Copied = new() { CopyOnLoad = true };

    /// <summary>
    /// Copy every tensor out of the file at load (read(2) into memory the process owns) instead of keeping views
    /// of the memory mapping. A mapped file that is truncated under a running process kills it with SIGBUS on the
    /// next touch of a lost page; copied weights cannot be reached by any later change of the file. It costs the
    /// reading of the whole file at load and anonymous memory the kernel cannot drop under pressure (the page
    /// cache of a mapping it can); weights converted to another dtype (fp32 files run in bf16) are copies anyway.
    /// Measured on the full-size PixArt-LCM transformer (1.22 GB bf16, page cache warm, 2 shared cores): load
    /// 3.8–4.0 s instead of 0.6–1.6 s, RSS after load 1.36 GB instead of 0.18 GB, and the same 1.39 GB once the first
    /// forward has touched every mapped page (anonymous memory then, page cache before).
    /// </summary>
    public bool CopyOnLoad { get; init; }

    /// <summary>Tensors up to this many elements are checked for NaN/Inf at load (default 65536: norms, biases, small
    /// projections — cheap, and without touching the pages of the large mapped tensors). long.MaxValue checks all,
    /// at a cost (≈14 s and ≈0.5 GB of transient memory for 1.22 GB of bf16 weights on 2 cores); the pipeline's
    /// check of the final latents (<see cref="NonFinite"/>) catches the rest.</summary>
    public long FiniteCheckMaxElements { get; init; } = 1 << 16;
}

/// <summary>
/// Hands out a model's weights by checkpoint key, the way candle's VarBuilder does: each module asks for its
/// own tensors (<c>w.Sub("attn1").Get("to_q.weight", inner, dim)</c>) with the shape its config implies, so a
/// missing or mis-shaped weight is an error naming the key, and <see cref="CheckAllUsed"/> names any weight the
/// model did not ask for. Tensors in the file's dtype on the CPU are handed out as zero-copy views of the
/// memory-mapped file; anything else is converted once.
/// </summary>
internal sealed class Weights : IDisposable
{
    private sealed class Source(string description, Func<string, bool> contains, Func<string, long[]?> shapeOf,
                                Func<string, long[], Tensor> load, IEnumerable<string> keys, Action dispose,
                                Action<IReadOnlySet<string>>? checkUsed = null,
                                Func<string, string>? whereIs = null, long finiteCheckMaxElements = 0,
                                Func<string, ScalarType, QuantizedTensor?>? quantized = null, bool claimsEveryKey = false)
    {
        /// <summary>Random weights: every key is "there" (generated on request).</summary>
        public readonly bool ClaimsEveryKey = claimsEveryKey;
        /// <summary>An extra check run by <see cref="CheckAllUsed"/> with the keys the model asked for.</summary>
        public readonly Action<IReadOnlySet<string>>? CheckUsed = checkUsed;
        /// <summary>GGUF only: the weight still encoded, or null where it is stored in the asked dtype already.</summary>
        public readonly Func<string, ScalarType, QuantizedTensor?>? Quantized = quantized;
        public readonly string Description = description;
        public readonly Func<string, bool> Contains = contains;
        public readonly Func<string, long[]?> ShapeOf = shapeOf;
        /// <summary>The file a key is stored in, for messages (the description when there is no file).</summary>
        public readonly Func<string, string> WhereIs = whereIs ?? (_ => description);
        /// <summary>Loaded tensors up to this many elements are checked for NaN/Inf (0: none; long.MaxValue: all).</summary>
        public readonly long FiniteCheckMaxElements = finiteCheckMaxElements;
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
    /// <param name="load">Zero-copy views (default) or copies owned by the process (<see cref="WeightLoadOptions.CopyOnLoad"/>).</param>
    public static Weights FromFiles(IReadOnlyList<string> files, ScalarType dtype, Device? device = null, string? description = null,
                                    IReadOnlyDictionary<string, string>? weightMap = null, string? weightMapSource = null,
                                    WeightLoadOptions? load = null)
    {
        load ??= WeightLoadOptions.Default;
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
            load.CopyOnLoad ? (name, _) => where[name].LoadCopy(name) : (name, _) => where[name].Load(name),
            where.Keys,
            () => { foreach (var o in opened) o.Dispose(); },
            whereIs: name => where[name].FilePath,
            finiteCheckMaxElements: load.FiniteCheckMaxElements);
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
            whereIs: key => $"{file.FilePath}: tensor '{keyToTensor[key]}'",
            quantized: (key, want) =>
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
                if (shape.Length == 1 && (name.EndsWith("norm.weight", StringComparison.Ordinal) || name.Contains("norm") || name.EndsWith("layer_norm.weight", StringComparison.Ordinal)) && name.EndsWith("weight", StringComparison.Ordinal))
                    t.add_(1.0);
                var result = t.to(dtype).MoveToOuterDisposeScope();
                created?.Invoke(name, result);
                return result;
            },
            seen, () => gen.Dispose(), claimsEveryKey: true);
        return new Weights(source, "", dtype, device ?? CPU);
    }

    /// <summary>
    /// These weights with additions: when the model asks for a key <paramref name="addTo"/> names, it gets
    /// <c>merge(stored tensor as a float32 copy)</c> — never a write into the memory-mapped file — then cast to the
    /// held dtype as any other weight. <see cref="CheckAllUsed"/> also runs <paramref name="checkUsed"/> with the keys the
    /// model asked for (e.g. every adapter delta must have been merged). Only for the root (unprefixed) weights.
    /// The result shares this object's files: dispose this one after it; disposing the result frees nothing of this.
    /// </summary>
    /// <param name="addTo">key → function that receives the stored weight as a fresh float32 CPU tensor (its own, to
    /// modify in place) and returns the merged float32 tensor</param>
    public Weights WithMerged(IReadOnlyDictionary<string, Func<Tensor, Tensor>> addTo, string description,
                              Action<IReadOnlySet<string>>? checkUsed = null, Action? dispose = null)
    {
        if (_prefix.Length != 0) throw new InvalidOperationException("WithMerged applies to the root weights, not to a Sub.");
        var inner = _source;
        var source = new Source(
            $"{inner.Description} + {description}", inner.Contains, inner.ShapeOf,
            (name, shape) =>
            {
                var raw = inner.Load(name, shape);
                if (!addTo.TryGetValue(name, out var merge)) return raw;
                using var scope = NewDisposeScope();
                Tensor own;
                using (raw) own = raw.to(ScalarType.Float32, CPU, copy: true);   // a copy, whatever the file's dtype
                return merge(own).MoveToOuterDisposeScope();
            },
            inner.Keys, dispose ?? (() => { }), checkUsed, inner.WhereIs, inner.FiniteCheckMaxElements);
        return new Weights(source, "", DType, Device);
    }

    /// <summary>The stored keys (the root's; for <see cref="Random"/>: those generated so far).</summary>
    public IEnumerable<string> StoredKeys => _source.Keys;

    /// <summary>The stored shape of <paramref name="key"/> (a root key), or null when unknown or absent.</summary>
    public long[]? StoredShape(string key) => _source.Contains(key) ? _source.ShapeOf(key) : null;

    public Weights Sub(string name) => new(_source, Join(name), DType, Device);

    public bool Contains(string name) => _source.Contains(Join(name));

    /// <summary>
    /// True for <see cref="Random"/>: every key is generated on request, so <see cref="Contains"/> says nothing about
    /// which of two alternative keys a checkpoint stores (T5's tied embedding).
    /// </summary>
    public bool ClaimsEveryKey => _source.ClaimsEveryKey;

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
        try
        {
            CheckStored(key, raw, dtype);
        }
        catch
        {
            raw.Dispose();
            throw;
        }
        // Device has no value equality: compare type and index. The zero-copy view is handed out as it is.
        if (raw.dtype == dtype && raw.device_type == Device.type && (Device.index < 0 || raw.device_index == Device.index))
            return raw;
        using (raw) return raw.to(dtype, Device);
    }

    /// <summary>
    /// What a module asks for must be what the file stores: a floating weight from a floating tensor (an integer or
    /// bool tensor — e.g. F32 data relabelled I32 in a header — would convert into garbage and a black image), and
    /// finite values (checked for small tensors, or all of them with <see cref="WeightLoadOptions.CopyOnLoad"/>).
    /// </summary>
    private void CheckStored(string key, Tensor raw, ScalarType wanted)
    {
        if (IsFloating(wanted) && !raw.is_floating_point())
            throw new WeightFileException($"{_source.WhereIs(key)}: weight '{key}' is stored as {DTypeName(raw.dtype)}, but the model needs floating-point weights " +
                "(F32, F16 or BF16). The file is corrupt or not a checkpoint of this model; download it again.");
        if (raw.is_floating_point() && raw.numel() > 0 && raw.numel() <= _source.FiniteCheckMaxElements)
        {
            // One vectorised reduction, no temporary of the tensor's size: NaN and ±Inf propagate into the sum
            // (accumulated in float32, so finite weights cannot overflow it); only then are they counted.
            using var total = raw.sum(type: ScalarType.Float32);
            if (!float.IsFinite(total.item<float>()))
            {
                // The sum also overflows for large finite weights: only NaN and ±Inf elements condemn the file.
                using var bad = torch.isfinite(raw).logical_not().sum();
                if (bad.item<long>() > 0)
                    throw new WeightFileException($"{_source.WhereIs(key)}: weight '{key}' holds {bad.item<long>()} NaN or infinite value(s). " +
                        "The file is corrupt; download the model again.");
            }
        }
    }

    private static bool IsFloating(ScalarType t) => t is ScalarType.Float16 or ScalarType.BFloat16 or ScalarType.Float32 or ScalarType.Float64;

    private static string DTypeName(ScalarType t)
    {
        try { return SafeTensorsFile.ToDTypeName(t); }
        catch (ArgumentException) { return t.ToString(); }
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
        _source.CheckUsed?.Invoke(_source.Used);
    }

    public IReadOnlyCollection<string> UsedKeys => _source.Used;

    private string Join(string name) => _prefix.Length == 0 ? name : _prefix + "." + name;

    public void Dispose()
    {
        if (_prefix.Length == 0) _source.Dispose();
    }
}
