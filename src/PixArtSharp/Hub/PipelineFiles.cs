using System.Text.Json;
using PixArtSharp.Loading;

namespace PixArtSharp.Hub;

/// <summary>
/// Which files of a diffusers pipeline repo PixArtSharp needs, so a download fetches those and nothing else
/// (no .bin, no other variants, no README/images): <c>model_index.json</c>; for each component it names, its
/// <c>config.json</c> or <c>scheduler_config.json</c>, the tokenizer files, and the safetensors weights of the
/// chosen variant (one file, or a <c>*.safetensors.index[.variant].json</c> plus the shards it lists).
/// Paths are repo paths with '/' separators.
/// </summary>
internal static class PipelineFiles
{
    public const string ModelIndex = "model_index.json";

    private static readonly string[] ConfigNames = ["config.json", "scheduler_config.json"];
    // T5Tokenizer (slow, sentencepiece) files; tokenizer.json (the fast tokenizer) is not read by PixArtSharp.
    private static readonly string[] TokenizerNames = ["spiece.model", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json"];
    // diffusers models save diffusion_pytorch_model*, transformers models model*.
    private static readonly string[] WeightStems = ["diffusion_pytorch_model", "model"];

    /// <summary>The component names in a <c>model_index.json</c>: keys whose value is a [library, class] pair (nulls skipped, as diffusers does).</summary>
    public static IReadOnlyList<string> Components(ReadOnlySpan<byte> modelIndexJson, string repoId)
    {
        var names = new List<string>();
        try
        {
            var reader = new Utf8JsonReader(modelIndexJson, new JsonReaderOptions { CommentHandling = JsonCommentHandling.Skip, AllowTrailingCommas = true });
            using var doc = JsonDocument.ParseValue(ref reader);
            if (doc.RootElement.ValueKind != JsonValueKind.Object) throw new JsonException("not an object");
            foreach (var p in doc.RootElement.EnumerateObject())
            {
                if (p.Name.StartsWith('_') || p.Value.ValueKind != JsonValueKind.Array || p.Value.GetArrayLength() != 2) continue;
                if (p.Value[0].ValueKind != JsonValueKind.String || p.Value[1].ValueKind != JsonValueKind.String) continue;
                if (!IsPlainName(p.Name))
                    throw new HubDownloadException(HubErrorKind.Unsupported, repoId, ModelIndex, $"{repoId}: model_index.json names a component '{p.Name}', which is not a plain folder name.");
                names.Add(p.Name);
            }
        }
        catch (JsonException e)
        {
            throw new HubDownloadException(HubErrorKind.Server, repoId, ModelIndex, $"{repoId}: model_index.json is not valid JSON ({e.Message}).", e);
        }
        if (names.Count == 0)
            throw new HubDownloadException(HubErrorKind.Unsupported, repoId, ModelIndex, $"{repoId}: model_index.json lists no components, so it is not a diffusers pipeline.");
        return names;
    }

    /// <summary>
    /// The files to fetch besides model_index.json, given the repo's file list. Weight shards are not included:
    /// a returned path for which <see cref="IsShardIndex"/> holds must be fetched and passed to <see cref="ShardsOf"/>.
    /// Without the requested variant a component falls back to its default weights, as diffusers' download does.
    /// </summary>
    public static IReadOnlyList<string> Select(IReadOnlySet<string> repoFiles, IEnumerable<string> components, string? variant, string repoId)
    {
        ModelFolder.CheckVariant(variant);
        var selected = new List<string>();
        foreach (var c in components)
        {
            int before = selected.Count;
            foreach (var n in ConfigNames.Concat(TokenizerNames))
                if (repoFiles.Contains($"{c}/{n}")) selected.Add($"{c}/{n}");
            if (selected.Count == before)
                throw new HubDownloadException(HubErrorKind.Unsupported, repoId, c,
                    repoFiles.Any(f => f.StartsWith(c + "/", StringComparison.Ordinal))
                        ? $"{repoId}: the '{c}' folder has no config.json, scheduler_config.json or tokenizer files, so PixArtSharp cannot load it."
                        : $"{repoId}: model_index.json lists a '{c}' component but the repo has no '{c}/' folder.");
            if (repoFiles.Contains($"{c}/config.json"))
                selected.Add(WeightEntry(repoFiles, c, variant, repoId));
        }
        return selected;
    }

    /// <summary>True for a sharded-weights index (<c>*.safetensors.index.json</c> or <c>*.safetensors.index.{variant}.json</c>).</summary>
    public static bool IsShardIndex(string path) => path.EndsWith(".json", StringComparison.Ordinal) && path.Contains(".safetensors.index", StringComparison.Ordinal);

    /// <summary>The repo paths of the shards named by a weight index (its <c>weight_map</c> values), in first-use order.</summary>
    public static IReadOnlyList<string> ShardsOf(string indexPath, ReadOnlySpan<byte> json, string repoId)
    {
        string dir = indexPath.Contains('/') ? indexPath[..(indexPath.LastIndexOf('/') + 1)] : "";
        var shards = new List<string>();
        try
        {
            var reader = new Utf8JsonReader(json);
            using var doc = JsonDocument.ParseValue(ref reader);
            if (!doc.RootElement.TryGetProperty("weight_map", out var map) || map.ValueKind != JsonValueKind.Object)
                throw new HubDownloadException(HubErrorKind.Unsupported, repoId, indexPath, $"{repoId}: {indexPath} has no weight_map.");
            foreach (var p in map.EnumerateObject())
            {
                string file = p.Value.ValueKind == JsonValueKind.String ? p.Value.GetString()! : "";
                if (!IsPlainName(file) || !file.EndsWith(".safetensors", StringComparison.Ordinal))
                    throw new HubDownloadException(HubErrorKind.Unsupported, repoId, indexPath, $"{repoId}: {indexPath} maps '{p.Name}' to '{file}', which is not a .safetensors file in the same folder.");
                if (!shards.Contains(dir + file)) shards.Add(dir + file);
            }
        }
        catch (JsonException e)
        {
            throw new HubDownloadException(HubErrorKind.Server, repoId, indexPath, $"{repoId}: {indexPath} is not valid JSON ({e.Message}).", e);
        }
        return shards;
    }

    // The weight file (or shard index) of one model component; same search order as ModelFolder.FindWeightFiles.
    private static string WeightEntry(IReadOnlySet<string> files, string c, string? variant, string repoId)
    {
        string? Find(string? v)
        {
            string dot = string.IsNullOrEmpty(v) ? "" : "." + v;
            foreach (var stem in WeightStems)
            {
                if (files.Contains($"{c}/{stem}{dot}.safetensors")) return $"{c}/{stem}{dot}.safetensors";
                if (files.Contains($"{c}/{stem}.safetensors.index{dot}.json")) return $"{c}/{stem}.safetensors.index{dot}.json";
            }
            return null;
        }
        var found = (string.IsNullOrEmpty(variant) ? null : Find(variant)) ?? Find(null);
        if (found != null) return found;

        var present = files.Where(f => f.StartsWith(c + "/", StringComparison.Ordinal) && (f.Contains(".safetensors") || f.EndsWith(".bin", StringComparison.Ordinal) || f.EndsWith(".ckpt", StringComparison.Ordinal) || f.EndsWith(".pt", StringComparison.Ordinal)))
            .Select(f => f[(c.Length + 1)..]).ToList();
        string hint = present.Count == 0
            ? "it has no weight files."
            : present.Any(f => f.Contains(".safetensors"))
                ? $"it has {string.Join(", ", present)}; ask for one of those variants (--variant)."
                : $"it has only PyTorch pickle weights ({string.Join(", ", present)}); PixArtSharp reads safetensors only, so use a repo (or revision) with .safetensors files.";
        throw new HubDownloadException(HubErrorKind.Unsupported, repoId, c,
            $"{repoId}: no {(string.IsNullOrEmpty(variant) ? "" : $"'{variant}' or default ")}safetensors weights in '{c}/': {hint}");
    }

    private static bool IsPlainName(string name) =>
        name.Length > 0 && name != "." && name != ".." && name.IndexOfAny(['/', '\\', '\0']) < 0;
}
