using System.Text.Json;
using static TorchSharp.torch;

namespace PixArtSharp.Loading;

/// <summary>
/// A diffusers pipeline folder: <c>model_index.json</c> naming each component's library and class, one
/// sub-folder per component with its <c>config.json</c> (or <c>scheduler_config.json</c>) and weights.
/// </summary>
internal sealed class ModelFolder
{
    public string Root { get; }
    /// <summary>Component name → (library, class), e.g. transformer → (diffusers, Transformer2DModel).</summary>
    public IReadOnlyDictionary<string, (string Library, string ClassName)> Components { get; }
    public string PipelineClass { get; }

    private ModelFolder(string root, string pipelineClass, Dictionary<string, (string, string)> components)
    {
        Root = root;
        PipelineClass = pipelineClass;
        Components = components;
    }

    public static ModelFolder Open(string root)
    {
        root = Path.GetFullPath(root);
        if (!Directory.Exists(root))
            throw new ModelNotFoundException($"Model folder not found: {root}. Give a diffusers model folder or a Hugging Face id such as PixArt-alpha/PixArt-LCM-XL-2-1024-MS.");
        string index = Path.Combine(root, "model_index.json");
        if (FileKinds.Of(index) == FileKind.Missing)
            throw new ModelNotFoundException($"{root} has no model_index.json, so it is not a diffusers pipeline folder. Give the folder that holds model_index.json (with transformer/, vae/, text_encoder/, tokenizer/ and scheduler/ inside).");
        var components = new Dictionary<string, (string, string)>(StringComparer.Ordinal);
        string pipelineClass;
        try
        {
            using var doc = JsonDocument.Parse(ModelFiles.ReadAllBytes(index, "model index"));
            if (doc.RootElement.ValueKind != JsonValueKind.Object)
                throw new WeightFileException($"{index} is not a JSON object; download the model again.");
            pipelineClass = doc.RootElement.TryGetProperty("_class_name", out var c) && c.ValueKind == JsonValueKind.String ? c.GetString()! : "";
            // Components are ["library", "ClassName"]; optional ones absent from a pipeline are [null, null].
            foreach (var p in doc.RootElement.EnumerateObject())
            {
                if (p.Name.StartsWith('_') || p.Value.ValueKind != JsonValueKind.Array || p.Value.GetArrayLength() != 2) continue;
                if (p.Value[0].ValueKind != JsonValueKind.String || p.Value[1].ValueKind != JsonValueKind.String) continue;
                components[p.Name] = (p.Value[0].GetString()!, p.Value[1].GetString()!);
            }
        }
        catch (JsonException e)
        {
            throw new WeightFileException($"{index} is not valid JSON ({e.Message}); download the model again.", e);
        }
        return new ModelFolder(root, pipelineClass, components);
    }

    public string ComponentDir(string component)
    {
        string dir = Path.Combine(Root, component);
        if (!Directory.Exists(dir))
            throw new ModelNotFoundException($"{Root} has no '{component}' folder, which model_index.json requires. The download is incomplete: download the model again.");
        return dir;
    }

    public string ClassOf(string component) =>
        Components.TryGetValue(component, out var c) ? c.ClassName
        : throw new ModelNotFoundException($"{Path.Combine(Root, "model_index.json")} lists no '{component}' component.");

    /// <summary>
    /// The weight files of one component, following diffusers' naming: <c>{stem}.safetensors</c>, or a sharded
    /// <c>{stem}.safetensors.index.json</c>; with a variant, <c>{stem}.{variant}.safetensors</c> or
    /// <c>{stem}.safetensors.index.{variant}.json</c> (shards <c>{stem}.{variant}-00001-of-0000N.safetensors</c>).
    /// A component without the requested variant gets its default weights, as diffusers (and our Hub download)
    /// does; <see cref="VariantFallbacks"/> names such components so a front end can warn.
    /// </summary>
    public static IReadOnlyList<string> FindWeightFiles(string componentDir, string stem, string? variant) =>
        Locate(componentDir, stem, variant).Files;

    /// <summary>True when <paramref name="componentDir"/> holds <paramref name="stem"/> weights of that variant (null = default), single or sharded.</summary>
    public static bool HasWeights(string componentDir, string stem, string? variant)
    {
        var (single, index) = WeightNames(componentDir, stem, variant);
        return File.Exists(single) || File.Exists(index);
    }

    /// <summary>
    /// The number of weights (elements) a component's safetensors hold, read from their headers only: with the
    /// compute dtype's size this is the memory the component takes once loaded. Checkpoint stems are
    /// <c>diffusion_pytorch_model</c> (diffusers) or <c>model</c> (transformers); 0 when the folder has neither.
    /// </summary>
    public long ParameterCount(string component, string? variant)
    {
        string dir = ComponentDir(component);
        foreach (var stem in new[] { "diffusion_pytorch_model", "model" })
        {
            if (!HasWeights(dir, stem, variant) && !HasWeights(dir, stem, null)) continue;
            long count = 0;
            foreach (var file in FindWeightFiles(dir, stem, variant))
            {
                using var st = SafeTensorsFile.Open(file);
                count += st.Tensors.Values.Sum(t => t.Shape.Aggregate(1L, (a, d) => a * d));
            }
            return count;
        }
        return 0;
    }

    /// <summary>
    /// Every weight file the components of this folder load with <paramref name="variant"/> (all shards), in component
    /// order: what a server stamps at load (<see cref="FileStamps.Capture"/>) to notice a file changed under it.
    /// </summary>
    public IReadOnlyList<string> WeightFiles(string? variant)
    {
        var files = new List<string>();
        foreach (var component in Components.Keys.Order(StringComparer.Ordinal))
        {
            string dir = Path.Combine(Root, component);
            if (!File.Exists(Path.Combine(dir, "config.json"))) continue;
            foreach (var stem in new[] { "diffusion_pytorch_model", "model" })
                if (HasWeights(dir, stem, variant) || HasWeights(dir, stem, null))
                {
                    files.AddRange(FindWeightFiles(dir, stem, variant));
                    break;
                }
        }
        return files;
    }

    /// <summary>
    /// One warning per model component that lacks the <paramref name="variant"/> weights and will load its
    /// default weights instead (empty without a variant). Components are those with a config.json; their weights
    /// are <c>model*</c> (transformers) or <c>diffusion_pytorch_model*</c> (diffusers).
    /// </summary>
    public IReadOnlyList<string> VariantFallbacks(string? variant)
    {
        CheckVariant(variant);
        if (string.IsNullOrEmpty(variant)) return [];
        var warnings = new List<string>();
        foreach (var component in Components.Keys.Order(StringComparer.Ordinal))
        {
            string dir = Path.Combine(Root, component);
            if (!File.Exists(Path.Combine(dir, "config.json"))) continue;
            string[] stems = ["diffusion_pytorch_model", "model"];
            if (stems.Any(s => HasWeights(dir, s, variant)) || !stems.Any(s => HasWeights(dir, s, null))) continue;
            warnings.Add($"'{component}' has no '{variant}' weights; its default weights are loaded instead (as diffusers does).");
        }
        return warnings;
    }

    /// <summary>
    /// Checks a weights variant before it is joined into a file name: a variant is a name (letters, digits,
    /// <c>-</c>, <c>_</c> and <c>.</c>, at most 64, not starting or ending with <c>.</c>, no <c>..</c>), never a path.
    /// Null or empty means no variant. Throws an <see cref="ArgumentException"/> with ParamName <c>variant</c>.
    /// </summary>
    public static void CheckVariant(string? variant)
    {
        if (string.IsNullOrEmpty(variant)) return;
        if (variant.Length > 64 || !variant.All(c => char.IsAsciiLetterOrDigit(c) || c is '-' or '_' or '.')
            || variant.Contains("..", StringComparison.Ordinal) || variant.StartsWith('.') || variant.EndsWith('.'))
            throw new ArgumentException(
                $"The variant '{Printable(variant)}' is not a variant name: use letters, digits, '-', '_' and '.' (e.g. fp16), at most 64, without '..'.",
                nameof(variant));
    }

    // A name as it can be printed in one line of a message (control characters escaped, long ones cut).
    private static string Printable(string s)
    {
        var sb = new System.Text.StringBuilder();
        foreach (char c in s.Length > 80 ? s[..80] + "…" : s)
            sb.Append(char.IsControl(c) ? $"\\u{(int)c:x4}" : c.ToString());
        return sb.ToString();
    }

    private static (string Single, string Index) WeightNames(string componentDir, string stem, string? variant)
    {
        CheckVariant(variant);
        string v = string.IsNullOrEmpty(variant) ? "" : "." + variant;
        return (Path.Combine(componentDir, $"{stem}{v}.safetensors"),
                Path.Combine(componentDir, string.IsNullOrEmpty(variant) ? $"{stem}.safetensors.index.json" : $"{stem}.safetensors.index{v}.json"));
    }

    /// <summary>The weight files, and the shard index they came from (null for a single file).</summary>
    private static (IReadOnlyList<string> Files, string? Index) Locate(string componentDir, string stem, string? variant)
    {
        var (single, index) = WeightNames(componentDir, stem, variant);
        if (File.Exists(single)) return ([single], null);
        if (File.Exists(index)) return (ShardsOf(index), index);
        // diffusers loads a component's default weights when it has no files of the requested variant.
        if (!string.IsNullOrEmpty(variant) && HasWeights(componentDir, stem, null))
            return Locate(componentDir, stem, null);

        var present = Directory.Exists(componentDir)
            ? Directory.GetFiles(componentDir).Select(Path.GetFileName).Where(f => f!.Contains(".safetensors") || f.EndsWith(".bin", StringComparison.Ordinal)).ToList()
            : [];
        string hint = present.Count == 0
            ? "The folder holds no weights: download the model again."
            : present.All(f => f!.EndsWith(".bin", StringComparison.Ordinal))
                ? $"Only PyTorch .bin weights are there ({string.Join(", ", present)}); PixArtSharp reads safetensors only. Convert them, or download the safetensors files."
                : string.IsNullOrEmpty(variant)
                    ? $"Found {string.Join(", ", present)}: if these are a variant, pass it (e.g. --variant fp16)."
                    : $"Found {string.Join(", ", present)}: the '{variant}' variant is not there; drop the variant or download it.";
        string lookedFor = string.IsNullOrEmpty(variant)
            ? $"{Path.GetFileName(single)} and {Path.GetFileName(index)}"
            : $"{Path.GetFileName(single)}, {Path.GetFileName(index)} and the default {stem}.safetensors";
        throw new ModelNotFoundException($"No {(string.IsNullOrEmpty(variant) ? "" : $"'{variant}' or default ")}weights in {componentDir} (looked for {lookedFor}). {hint}");
    }

    /// <summary>The shard files named by a <c>*.safetensors.index.json</c>, in order, all checked to exist.</summary>
    public static IReadOnlyList<string> ShardsOf(string indexPath)
    {
        var paths = WeightMapOf(indexPath).Values.Distinct().ToList();
        foreach (var p in paths)
            if (!File.Exists(p))
                throw new ModelNotFoundException($"Shard {p}, listed in {indexPath}, is missing: the download is incomplete; download the model again.");
        return paths;
    }

    /// <summary>
    /// The <c>weight_map</c> of a shard index: checkpoint key → full path of its shard (in the index's folder;
    /// a name that leaves the folder is refused). Shards are not checked to exist here.
    /// </summary>
    public static IReadOnlyDictionary<string, string> WeightMapOf(string indexPath)
    {
        string dir = Path.GetDirectoryName(Path.GetFullPath(indexPath))!;
        // Insertion order is kept (Dictionary without removals), so shards come out in the index's order.
        var result = new Dictionary<string, string>(StringComparer.Ordinal);
        try
        {
            using var doc = JsonDocument.Parse(ModelFiles.ReadAllBytes(indexPath, "shard index"));
            if (doc.RootElement.ValueKind != JsonValueKind.Object
                || !doc.RootElement.TryGetProperty("weight_map", out var map) || map.ValueKind != JsonValueKind.Object)
                throw new WeightFileException($"{indexPath} has no weight_map object; download the model again.");
            foreach (var p in map.EnumerateObject())
            {
                if (p.Value.ValueKind != JsonValueKind.String)
                    throw new WeightFileException($"{indexPath}: tensor '{p.Name}' maps to {p.Value.GetRawText()}, not a file name; download the model again.");
                string file = p.Value.GetString()!;
                if (file.Length == 0 || file.Contains('/') || file.Contains('\\') || file.StartsWith('.') || Path.IsPathRooted(file)
                    || !file.EndsWith(".safetensors", StringComparison.Ordinal))
                    throw new WeightFileException($"{indexPath}: tensor '{p.Name}' points at '{file}', which is not a .safetensors file name in the same folder.");
                if (!result.TryAdd(p.Name, Path.Combine(dir, file)))
                    throw new WeightFileException($"{indexPath}: tensor '{p.Name}' appears twice in weight_map; download the model again.");
            }
        }
        catch (JsonException e)
        {
            throw new WeightFileException($"{indexPath} is not valid JSON ({e.Message}); download the model again.", e);
        }
        catch (IOException e) when (e is FileNotFoundException or DirectoryNotFoundException)
        {
            throw new ModelNotFoundException($"Shard index not found: {indexPath}.", e);
        }
        if (result.Count == 0)
            throw new WeightFileException($"{indexPath} has an empty weight_map; download the model again.");
        return result;
    }

    /// <summary>
    /// Opens a component's weights (all shards) for loading by key. A sharded checkpoint must agree with its
    /// index: every key in the shard named for it, and no key the index does not list.
    /// </summary>
    public static Weights OpenWeights(string componentDir, string stem, string? variant, ScalarType dtype, Device? device = null,
                                      WeightLoadOptions? load = null)
    {
        var (files, index) = Locate(componentDir, stem, variant);
        return Weights.FromFiles(files, dtype, device,
            description: index == null ? files[0] : $"{componentDir} ({files.Count} shards)",
            weightMap: index == null ? null : WeightMapOf(index), weightMapSource: index, load: load);
    }
}
