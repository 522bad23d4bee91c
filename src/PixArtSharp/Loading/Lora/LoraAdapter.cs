using System.Globalization;
using System.Security.Cryptography;
using System.Text.Json;
using System.Text.RegularExpressions;
using TorchSharp;
using static TorchSharp.torch;

namespace PixArtSharp.Loading.Lora;

/// <summary>A LoRA to apply: an adapter folder or file and its strength (1 = as trained).</summary>
/// <param name="Path">A PEFT adapter folder (adapter_config.json + weights) or a kohya .safetensors file.</param>
/// <param name="Scale">Multiplies the adapter's update: 1 = as trained, 0 = no effect.</param>
public sealed record LoraSpec(string Path, double Scale = 1.0);

/// <summary>The layouts people publish LoRA adapters in.</summary>
internal enum LoraLayout
{
    /// <summary>PEFT <c>save_pretrained</c>: a folder with <c>adapter_config.json</c> (r, lora_alpha, …) and
    /// <c>adapter_model.safetensors</c> (keys <c>[base_model.model.|transformer.]&lt;module&gt;.lora_A.weight</c> / <c>lora_B.weight</c>).</summary>
    Peft,
    /// <summary>A single diffusers-style file with PEFT key names and no config (diffusers' <c>save_lora_weights</c>):
    /// alpha = rank unless the file stores <c>&lt;module&gt;.alpha</c>, as diffusers loads it.</summary>
    Diffusers,
    /// <summary>kohya / OneTrainer: one file, keys <c>lora_transformer_&lt;module path with . → _&gt;.lora_down.weight</c> /
    /// <c>.lora_up.weight</c> / <c>.alpha</c> (a scalar).</summary>
    Kohya,
}

/// <summary>
/// One adapted Linear: ΔW = factor · (Up @ Down) with Down = A [r, in], Up = B [out, r] (float32, CPU) and
/// factor = alpha / r (rsLoRA: alpha / √r).
/// </summary>
/// <param name="Name">the module as the file names it: a dotted module path (PEFT, diffusers) or the kohya name
/// after <c>lora_transformer_</c> (dots replaced by underscores; resolved against the model by <see cref="LoraMerge"/>)</param>
internal sealed record LoraModule(string Name, Tensor Down, Tensor Up, double Alpha, bool RsLora)
{
    public long Rank => Down.shape[0];
    public double Factor => RsLora ? Alpha / Math.Sqrt(Rank) : Alpha / Rank;
}

/// <summary>
/// A LoRA adapter read into memory (float32 factors; the file is closed again). <see cref="Load"/> detects the layout;
/// <see cref="LoraMerge"/> applies one or more adapters to a transformer's weights.
/// </summary>
internal sealed class LoraAdapter : IDisposable
{
    public const string PeftConfigName = "adapter_config.json";
    public const string PeftWeightsName = "adapter_model.safetensors";
    public const string KohyaPrefix = "lora_transformer_";

    /// <summary>The path the user gave (folder or file).</summary>
    public string Path { get; }
    /// <summary>The safetensors file the factors come from (named in every error).</summary>
    public string WeightFile { get; }
    public LoraLayout Layout { get; }
    public IReadOnlyList<LoraModule> Modules { get; }
    /// <summary>For PNG metadata: the folder name (PEFT) or the file name without extension.</summary>
    public string DisplayName { get; }
    /// <summary>The first 12 hex digits of the SHA-256 of <see cref="WeightFile"/> (as image tools print LoRA hashes).</summary>
    public string ShortHash { get; }

    private LoraAdapter(string path, string weightFile, LoraLayout layout, IReadOnlyList<LoraModule> modules, string displayName)
    {
        Path = path;
        WeightFile = weightFile;
        Layout = layout;
        Modules = modules;
        DisplayName = displayName;
        ShortHash = HashOf(weightFile);
    }

    /// <summary>A PNG-metadata entry: "name (hash) × scale".</summary>
    public string Describe(double scale) => $"{DisplayName} ({ShortHash}) × {scale.ToString("0.###", CultureInfo.InvariantCulture)}";

    /// <summary>Loads each spec's adapter, paired with its scale (disposes those already loaded if one fails).</summary>
    public static IReadOnlyList<(LoraAdapter Adapter, double Scale)> LoadAll(IEnumerable<LoraSpec> specs)
    {
        var loaded = new List<(LoraAdapter, double)>();
        try
        {
            foreach (var s in specs) loaded.Add((Load(s.Path), s.Scale));
            return loaded;
        }
        catch
        {
            foreach (var (a, _) in loaded) a.Dispose();
            throw;
        }
    }

    /// <summary>
    /// Reads an adapter: a PEFT folder (<c>adapter_config.json</c> + <c>adapter_model.safetensors</c>), a PEFT
    /// <c>adapter_model.safetensors</c> with its config beside it, a kohya/OneTrainer <c>.safetensors</c> file, or a
    /// diffusers-style file with PEFT key names.
    /// </summary>
    /// <exception cref="LoraFileException">unknown layout, corrupt file, missing pair or alpha, DoRA, …</exception>
    public static LoraAdapter Load(string path)
    {
        if (Directory.Exists(path))
        {
            string config = System.IO.Path.Combine(path, PeftConfigName);
            string weights = System.IO.Path.Combine(path, PeftWeightsName);
            if (!File.Exists(weights))
            {
                string hint = File.Exists(System.IO.Path.Combine(path, "adapter_model.bin"))
                    ? " It has adapter_model.bin (a pickle, which PixArtSharp does not read): convert it to safetensors."
                    : " A PEFT adapter folder holds adapter_config.json and adapter_model.safetensors; a kohya LoRA is a single .safetensors file (give its path).";
                throw new LoraFileException($"{path}: no {PeftWeightsName} in this folder.{hint}");
            }
            if (!File.Exists(config))
                throw new LoraFileException($"{path}: {PeftWeightsName} has no {PeftConfigName} beside it (it gives r and lora_alpha). Copy the adapter folder whole.");
            return LoadPeft(path, config, weights, DisplayNameOf(path));
        }
        if (!File.Exists(path))
            throw new LoraFileException($"LoRA adapter not found: {path}. Give a PEFT adapter folder or a .safetensors file.");
        if (!path.EndsWith(".safetensors", StringComparison.OrdinalIgnoreCase))
            throw new LoraFileException($"{path}: not a .safetensors file. PixArtSharp reads LoRA adapters as safetensors (a PEFT folder or a kohya/OneTrainer file); convert .bin/.pt/.ckpt adapters first.");
        string beside = System.IO.Path.Combine(System.IO.Path.GetDirectoryName(System.IO.Path.GetFullPath(path))!, PeftConfigName);
        if (System.IO.Path.GetFileName(path) == PeftWeightsName && File.Exists(beside))
            return LoadPeft(path, beside, path, DisplayNameOf(System.IO.Path.GetDirectoryName(System.IO.Path.GetFullPath(path))!));
        return LoadFile(path);
    }

    private static string DisplayNameOf(string dir) => System.IO.Path.GetFileName(System.IO.Path.TrimEndingDirectorySeparator(System.IO.Path.GetFullPath(dir)));

    // ---- PEFT ----

    private sealed record PeftConfig(int R, double Alpha, bool RsLora, Dictionary<string, int> RankPattern, Dictionary<string, double> AlphaPattern);

    private static PeftConfig ReadPeftConfig(string configPath)
    {
        JsonElement root;
        try
        {
            using var doc = JsonDocument.Parse(File.ReadAllText(configPath));
            root = doc.RootElement.Clone();
        }
        catch (JsonException e)
        {
            throw new LoraFileException($"{configPath} is not valid JSON ({e.Message}). Download the adapter again.", e);
        }
        if (root.ValueKind != JsonValueKind.Object)
            throw new LoraFileException($"{configPath} is not a JSON object. Download the adapter again.");
        string? peftType = root.TryGetProperty("peft_type", out var pt) && pt.ValueKind == JsonValueKind.String ? pt.GetString() : null;
        if (peftType is not null && peftType != "LORA")
            throw new LoraFileException($"{configPath}: peft_type is '{peftType}'; PixArtSharp applies LoRA adapters only (peft_type LORA).");
        if (root.TryGetProperty("use_dora", out var dora) && dora.ValueKind == JsonValueKind.True)
            throw new LoraFileException($"{configPath}: this is a DoRA adapter (use_dora: true), which PixArtSharp does not apply (its magnitude vectors re-normalise each weight). Use a plain LoRA.");
        if (root.TryGetProperty("fan_in_fan_out", out var fifo) && fifo.ValueKind == JsonValueKind.True)
            throw new LoraFileException($"{configPath}: fan_in_fan_out is true (Conv1D-style weights), which a PixArt transformer never has. This adapter is for another model.");
        int r = root.TryGetProperty("r", out var rEl) && rEl.ValueKind == JsonValueKind.Number && rEl.TryGetInt32(out int rv) && rv > 0
            ? rv : throw new LoraFileException($"{configPath}: the rank 'r' is missing or not a positive integer. A PEFT adapter_config.json always has it; download the adapter again.");
        double alpha = root.TryGetProperty("lora_alpha", out var aEl) && aEl.ValueKind == JsonValueKind.Number
            ? aEl.GetDouble() : throw new LoraFileException($"{configPath}: 'lora_alpha' is missing. A PEFT adapter_config.json always has it; download the adapter again.");
        bool rs = root.TryGetProperty("use_rslora", out var rsEl) && rsEl.ValueKind == JsonValueKind.True;
        var rankPattern = new Dictionary<string, int>(StringComparer.Ordinal);
        var alphaPattern = new Dictionary<string, double>(StringComparer.Ordinal);
        if (root.TryGetProperty("rank_pattern", out var rp) && rp.ValueKind == JsonValueKind.Object)
            foreach (var p in rp.EnumerateObject()) rankPattern[p.Name] = p.Value.GetInt32();
        if (root.TryGetProperty("alpha_pattern", out var ap) && ap.ValueKind == JsonValueKind.Object)
            foreach (var p in ap.EnumerateObject()) alphaPattern[p.Name] = p.Value.GetDouble();
        return new PeftConfig(r, alpha, rs, rankPattern, alphaPattern);
    }

    private static LoraAdapter LoadPeft(string path, string configPath, string weightsPath, string displayName)
    {
        var cfg = ReadPeftConfig(configPath);
        var pairs = ReadPairs(weightsPath, LoraLayout.Peft);
        var modules = new List<LoraModule>();
        try
        {
            foreach (var (name, down, up, storedAlpha) in pairs)
            {
                storedAlpha?.Dispose();
                // PEFT's rule (tuners/lora/model.py): the first rank_pattern/alpha_pattern key k with re.match(".*\.k$", module) wins.
                string key = cfg.RankPattern.Keys.Concat(cfg.AlphaPattern.Keys)
                    .FirstOrDefault(k => Regex.IsMatch(name, $@"^.*\.{k}$")) ?? name;
                int r = cfg.RankPattern.TryGetValue(key, out int pr) ? pr : cfg.R;
                double alpha = cfg.AlphaPattern.TryGetValue(key, out double pa) ? pa : cfg.Alpha;
                modules.Add(new LoraModule(name, down, up, alpha, cfg.RsLora));
                if (down.shape[0] != r)
                    throw new LoraFileException($"{weightsPath}: '{name}' has rank {down.shape[0]} but {configPath} says r = {r}. The config does not belong to these weights.");
            }
        }
        catch
        {
            foreach (var p in pairs) { p.Down.Dispose(); p.Up.Dispose(); }
            throw;
        }
        return new LoraAdapter(path, weightsPath, LoraLayout.Peft, modules, displayName);
    }

    // ---- single files: kohya / diffusers ----

    private static LoraAdapter LoadFile(string path)
    {
        var layout = DetectLayout(path);
        var pairs = ReadPairs(path, layout);
        if (layout == LoraLayout.Kohya && pairs.FirstOrDefault(p => p.Alpha is null) is { Name: { } missing })
        {
            foreach (var p in pairs) { p.Down.Dispose(); p.Up.Dispose(); p.Alpha?.Dispose(); }
            throw new LoraFileException($"{path}: '{KohyaPrefix}{missing}.alpha' is missing. kohya/OneTrainer files store each module's alpha beside its lora_down/lora_up pair; the file is incomplete or was edited.");
        }
        var modules = new List<LoraModule>();
        foreach (var (name, down, up, storedAlpha) in pairs)
        {
            double alpha;
            if (storedAlpha is null)
            {
                alpha = down.shape[0];   // diffusers: without network alphas, lora_alpha = r (multiplier 1)
            }
            else
            {
                using (storedAlpha) alpha = storedAlpha.to(ScalarType.Float64).item<double>();
            }
            modules.Add(new LoraModule(name, down, up, alpha, RsLora: false));
        }
        return new LoraAdapter(path, path, layout, modules, System.IO.Path.GetFileNameWithoutExtension(path));
    }

    private static LoraLayout DetectLayout(string path)
    {
        using var st = Open(path);
        var keys = st.Tensors.Keys.ToList();
        if (keys.Count == 0)
            throw new LoraFileException($"{path} holds no tensors; it is not a LoRA adapter.");
        if (keys.Any(k => k.Contains(".lora_down.") || k.Contains(".lora_up.")))
            return LoraLayout.Kohya;
        if (keys.Any(k => k.Contains(".lora_A.") || k.Contains(".lora_B.")))
            return LoraLayout.Diffusers;
        string lycoris = keys.Any(k => k.Contains("hada_") || k.Contains("lokr_")) ? " It looks like a LyCORIS (LoHa/LoKr) file, which PixArtSharp does not apply." : "";
        throw new LoraFileException($"{path}: not a LoRA layout PixArtSharp knows (PEFT lora_A/lora_B or kohya lora_down/lora_up keys). " +
                                    $"Its first keys: '{string.Join("', '", keys.Order(StringComparer.Ordinal).Take(4))}'.{lycoris}");
    }

    private static SafeTensorsFile Open(string path)
    {
        try
        {
            return SafeTensorsFile.Open(path);
        }
        catch (Exception e) when (e is WeightFileException or ModelNotFoundException or IOException)
        {
            throw new LoraFileException($"LoRA adapter {path} cannot be read: {e.Message}", e);
        }
    }

    /// <summary>
    /// Groups the file's keys into (module, down, up, alpha?) with float32 CPU copies, in key order. Key names by layout:
    /// PEFT/diffusers <c>[base_model.model.][transformer.]M.lora_A[.default].weight</c> / <c>lora_B</c> / <c>M.alpha</c>;
    /// kohya <c>lora_transformer_N.lora_down.weight</c> / <c>lora_up.weight</c> / <c>alpha</c>.
    /// </summary>
    private static List<(string Name, Tensor Down, Tensor Up, Tensor? Alpha)> ReadPairs(string path, LoraLayout layout)
    {
        using var st = Open(path);
        var downs = new SortedDictionary<string, string>(StringComparer.Ordinal);
        var ups = new Dictionary<string, string>(StringComparer.Ordinal);
        var alphas = new Dictionary<string, string>(StringComparer.Ordinal);
        var unknown = new List<string>();
        foreach (var key in st.Tensors.Keys.Order(StringComparer.Ordinal))
        {
            if (key.Contains("dora_scale") || key.Contains("lora_magnitude_vector"))
                throw new LoraFileException($"{path}: '{key}' is a DoRA magnitude; PixArtSharp does not apply DoRA adapters (they re-normalise each weight). Use a plain LoRA.");
            if (layout == LoraLayout.Kohya)
            {
                if (key.StartsWith("lora_te", StringComparison.Ordinal))
                    throw new LoraFileException($"{path}: '{key}' adapts the text encoder; PixArtSharp applies LoRA to the transformer only. Save the adapter without text-encoder weights.");
                if (!key.StartsWith(KohyaPrefix, StringComparison.Ordinal)) { unknown.Add(key); continue; }
                string rest = key[KohyaPrefix.Length..];
                if (Strip(rest, ".lora_down.weight") is { } d) downs[d] = key;
                else if (Strip(rest, ".lora_up.weight") is { } u) ups[u] = key;
                else if (Strip(rest, ".alpha") is { } a) alphas[a] = key;
                else unknown.Add(key);
            }
            else
            {
                string rest = key;
                foreach (var prefix in new[] { "base_model.model.", "transformer." })
                    if (rest.StartsWith(prefix, StringComparison.Ordinal)) rest = rest[prefix.Length..];
                if ((Strip(rest, ".lora_A.weight") ?? Strip(rest, ".lora_A.default.weight")) is { } d) downs[d] = key;
                else if ((Strip(rest, ".lora_B.weight") ?? Strip(rest, ".lora_B.default.weight")) is { } u) ups[u] = key;
                else if (Strip(rest, ".alpha") is { } a) alphas[a] = key;
                else unknown.Add(key);
            }
        }
        string downName = layout == LoraLayout.Kohya ? "lora_down" : "lora_A", upName = layout == LoraLayout.Kohya ? "lora_up" : "lora_B";
        if (unknown.Count > 0)
            throw new LoraFileException($"{path}: {unknown.Count} key(s) are not {layout} LoRA weights, e.g. '{string.Join("', '", unknown.Take(3))}'. " +
                                        (layout == LoraLayout.Kohya ? $"kohya keys look like '{KohyaPrefix}<module>.lora_down.weight'." : "PEFT keys look like 'transformer.<module>.lora_A.weight'."));
        foreach (var m in downs.Keys)
            if (!ups.ContainsKey(m))
                throw new LoraFileException($"{path}: module '{m}' has {downName} but no {upName} weight; the file is incomplete. Download the adapter again.");
        foreach (var m in ups.Keys)
            if (!downs.ContainsKey(m))
                throw new LoraFileException($"{path}: module '{m}' has {upName} but no {downName} weight; the file is incomplete. Download the adapter again.");
        foreach (var m in alphas.Keys)
            if (!downs.ContainsKey(m))
                throw new LoraFileException($"{path}: '{alphas[m]}' is an alpha for a module without {downName}/{upName} weights; the file is incomplete.");

        var result = new List<(string, Tensor, Tensor, Tensor?)>();
        try
        {
            foreach (var (m, dKey) in downs)
            {
                var dShape = st.Tensors[dKey].Shape;
                var uShape = st.Tensors[ups[m]].Shape;
                if (dShape.Length == 4 || uShape.Length == 4)
                    throw new LoraFileException($"{path}: '{m}' adapts a convolution ({downName} shape [{string.Join(", ", dShape)}]); PixArtSharp applies LoRA to Linear layers only.");
                if (dShape.Length != 2 || uShape.Length != 2 || dShape[0] != uShape[1])
                    throw new LoraFileException($"{path}: '{m}' has {downName} [{string.Join(", ", dShape)}] and {upName} [{string.Join(", ", uShape)}], which are not a [r, in] / [out, r] pair. The file is corrupt.");
                Tensor? alpha = null;
                if (alphas.TryGetValue(m, out var aKey))
                {
                    if (st.Tensors[aKey].Shape.Aggregate(1L, (x, y) => x * y) != 1)
                        throw new LoraFileException($"{path}: '{aKey}' should be a single number but has shape [{string.Join(", ", st.Tensors[aKey].Shape)}].");
                    alpha = Copy(st, aKey);
                }
                result.Add((m, Copy(st, dKey), Copy(st, ups[m]), alpha));
            }
        }
        catch
        {
            foreach (var (_, d, u, a) in result) { d.Dispose(); u.Dispose(); a?.Dispose(); }
            throw;
        }
        return result;
    }

    private static Tensor Copy(SafeTensorsFile st, string key)
    {
        using var view = st.Load(key);
        var t = view.to(ScalarType.Float32, CPU, copy: true).DetachFromDisposeScope();
        if (!t.isfinite().all().item<bool>())
        {
            t.Dispose();
            throw new LoraFileException($"{st.FilePath}: '{key}' holds NaN or infinite values; the adapter is broken.");
        }
        return t;
    }

    private static string? Strip(string s, string suffix) =>
        s.EndsWith(suffix, StringComparison.Ordinal) && s.Length > suffix.Length ? s[..^suffix.Length] : null;

    private static string HashOf(string file)
    {
        using var fs = File.OpenRead(file);
        return Convert.ToHexStringLower(SHA256.HashData(fs))[..12];
    }

    public void Dispose()
    {
        foreach (var m in Modules) { m.Down.Dispose(); m.Up.Dispose(); }
    }
}
