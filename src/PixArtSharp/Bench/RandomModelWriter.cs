using System.Text.Json;
using System.Text.Json.Nodes;
using PixArtSharp.Loading;
using PixArtSharp.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace PixArtSharp.Bench;

/// <summary>
/// Seeded random weights for the full-size PixArt-LCM architectures, and a writer that stores them as a real
/// diffusers folder (model_index.json, the real configs, T5 in the real 4-shard layout with its index, the
/// tokenizer), so other tools — or <c>pixart bench --model</c> — can be timed on exactly the same weights.
/// Weights are N(0, 0.02) and norm weights 1 + N(0, 0.02) (<see cref="Weights.Random"/>): with the models'
/// normalisations this keeps every activation finite at full size in fp32, bf16 and fp16.
/// </summary>
internal static class RandomModelWriter
{
    /// <summary>Each component draws from its own seeded stream, so it can be built (and timed) alone.</summary>
    public static long T5Seed(long seed) => seed;
    public static long TransformerSeed(long seed) => seed + 1;
    public static long VaeSeed(long seed) => seed + 2;

    /// <summary>
    /// Writes the folder. <paramref name="dtype"/> is the stored dtype (bf16 or fp16 halve the 19 GB fp32 T5);
    /// a <paramref name="variant"/> such as "fp16" names the files as diffusers variants
    /// (<c>diffusion_pytorch_model.fp16.safetensors</c>, <c>model.safetensors.index.fp16.json</c>).
    /// </summary>
    /// <param name="spieceModel">The T5 SentencePiece model (spiece.model) to copy into tokenizer/.</param>
    public static void Write(string dir, long seed, ScalarType dtype, string? variant, string spieceModel, Action<string>? log = null)
    {
        ArgumentException.ThrowIfNullOrEmpty(dir);
        if (dtype is not (ScalarType.Float32 or ScalarType.BFloat16 or ScalarType.Float16))
            throw new ArgumentException($"dtype must be Float32, BFloat16 or Float16, not {dtype}.", nameof(dtype));
        if (variant is not null && (variant.Length == 0 || variant.Any(c => !char.IsAsciiLetterOrDigit(c) && c != '_')))
            throw new ArgumentException($"variant must be a short name such as fp16, not '{variant}'.", nameof(variant));
        if (!File.Exists(spieceModel))
            throw new ArgumentException($"The tokenizer model {spieceModel} does not exist.", nameof(spieceModel));
        if (Directory.Exists(dir) && Directory.EnumerateFileSystemEntries(dir).Any())
            throw new ArgumentException($"{dir} exists and is not empty; give a new folder.", nameof(dir));
        log ??= _ => { };

        // 1. Configs and tokenizer.
        RealConfigs.ExtractTo(dir);
        string realIndex = Path.Combine(dir, "text_encoder", "model.safetensors.index.json");
        var weightMap = JsonNode.Parse(File.ReadAllText(realIndex))!["weight_map"]!.AsObject()
            .ToDictionary(kv => kv.Key, kv => kv.Value!.GetValue<string>(), StringComparer.Ordinal);
        File.Delete(realIndex);
        File.Copy(spieceModel, Path.Combine(dir, "tokenizer", "spiece.model"));
        string v = variant is null ? "" : "." + variant;

        // 2. T5 in the real shard layout.
        var t5Config = T5Config.Load(Path.Combine(dir, "text_encoder", "config.json"));
        WriteComponent(seed: T5Seed(seed), dtype, log, "text_encoder",
            w => new T5EncoderModel(t5Config, w),
            tensors =>
            {
                var missing = weightMap.Keys.Where(k => !tensors.ContainsKey(k)).ToList();
                var extra = tensors.Keys.Where(k => !weightMap.ContainsKey(k)).ToList();
                if (missing.Count > 0 || extra.Count > 0)
                    throw new InvalidOperationException($"The T5 model's weights do not match the real shard index: missing {string.Join(", ", missing.Take(3))}, extra {string.Join(", ", extra.Take(3))}.");
                // model-00001-of-00004.safetensors → model{.variant}-00001-of-00004.safetensors, as transformers names variant shards.
                string ShardName(string real) => variant is null ? real : "model" + v + real["model".Length..];
                long total = 0;
                foreach (var group in weightMap.GroupBy(kv => kv.Value).OrderBy(g => g.Key, StringComparer.Ordinal))
                {
                    var shard = group.ToDictionary(kv => kv.Key, kv => tensors[kv.Key], StringComparer.Ordinal);
                    string path = Path.Combine(dir, "text_encoder", ShardName(group.Key));
                    SafeTensorsWriter.Write(path, shard, new Dictionary<string, string> { ["format"] = "pt" });
                    total += shard.Values.Sum(t => t.NumberOfElements * t.ElementSize);
                    log($"  {path} ({shard.Count} tensors)");
                }
                var index = new JsonObject
                {
                    ["metadata"] = new JsonObject { ["total_size"] = total },
                    ["weight_map"] = new JsonObject(weightMap.OrderBy(kv => kv.Key, StringComparer.Ordinal)
                        .Select(kv => KeyValuePair.Create(kv.Key, (JsonNode?)JsonValue.Create(ShardName(kv.Value))))),
                };
                string indexName = variant is null ? "model.safetensors.index.json" : $"model.safetensors.index{v}.json";
                File.WriteAllText(Path.Combine(dir, "text_encoder", indexName), index.ToJsonString(new JsonSerializerOptions { WriteIndented = true }) + "\n");
            });

        // 3. Transformer and VAE, one file each.
        var tConfig = PixArtTransformerConfig.Load(Path.Combine(dir, "transformer", "config.json"));
        WriteComponent(TransformerSeed(seed), dtype, log, "transformer", w => new PixArtTransformer2DModel(tConfig, w),
            tensors => WriteSingle(Path.Combine(dir, "transformer", $"{PixArtTransformer2DModel.WeightStem}{v}.safetensors"), tensors, log));
        var vConfig = AutoencoderKLConfig.Load(Path.Combine(dir, "vae", "config.json"));
        WriteComponent(VaeSeed(seed), dtype, log, "vae", w => new AutoencoderKL(vConfig, w),
            tensors => WriteSingle(Path.Combine(dir, "vae", $"{AutoencoderKL.WeightStem}{v}.safetensors"), tensors, log));
    }

    private static void WriteSingle(string path, IReadOnlyDictionary<string, Tensor> tensors, Action<string> log)
    {
        SafeTensorsWriter.Write(path, tensors, new Dictionary<string, string> { ["format"] = "pt" });
        log($"  {path} ({tensors.Count} tensors)");
    }

    /// <summary>
    /// Builds one model from seeded random weights (exactly as the benchmark does), keeps a handle on every weight
    /// it asked for, in the stored dtype, and hands them to <paramref name="write"/>; then frees them all.
    /// </summary>
    private static void WriteComponent(long seed, ScalarType dtype, Action<string> log, string what,
                                       Func<Weights, IDisposable> build, Action<IReadOnlyDictionary<string, Tensor>> write)
    {
        log($"{what}: generating seeded random weights (seed {seed}, {dtype})");
        var tensors = new Dictionary<string, Tensor>(StringComparer.Ordinal);
        try
        {
            using (var w = Weights.Random(seed, dtype, created: (name, t) => tensors[name] = t.alias().DetachFromDisposeScope()))
            using (build(w))
            {
                // The model is only needed to ask for every weight with its real shape; the aliases keep the storage.
            }
            write(tensors);
        }
        finally
        {
            foreach (var t in tensors.Values) t.Dispose();
        }
    }
}
