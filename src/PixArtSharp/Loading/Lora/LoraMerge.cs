using static TorchSharp.torch;

namespace PixArtSharp.Loading.Lora;

/// <summary>
/// Applies LoRA adapters to a model's weights at load time: each targeted Linear's weight becomes
/// <c>W + Σ scale · alpha/r · (B @ A)</c>, merged in float32 on the CPU and then cast to the compute dtype like any
/// other weight. Merging once is PEFT's <c>merge_and_unload</c>; the forward rule
/// <c>y = base(x) + scale · alpha/r · B(A(x))</c> (what the fixtures ran) differs from it only by rounding.
/// </summary>
internal static class LoraMerge
{
    /// <summary>
    /// <paramref name="baseWeights"/> (root weights of a model) with the adapters' deltas added when the model asks
    /// for <c>&lt;module&gt;.weight</c>. Module names are resolved here against the stored keys: PEFT names directly,
    /// kohya names (dots written as underscores) by matching every 2-D <c>*.weight</c> key with its dots replaced.
    /// The model's <see cref="Weights.CheckAllUsed"/> then also fails if an adapted weight was never asked for.
    /// Dispose the result before <paramref name="baseWeights"/>; the adapters must outlive the model's construction.
    /// </summary>
    /// <exception cref="LoraFileException">a module that matches no Linear, or whose shape does not fit</exception>
    public static Weights Apply(Weights baseWeights, IReadOnlyList<(LoraAdapter Adapter, double Scale)> loras)
    {
        var additions = new Dictionary<string, List<(Tensor Up, Tensor Down, double Multiplier)>>(StringComparer.Ordinal);
        if (loras.Count == 0) return baseWeights.WithMerged(new Dictionary<string, Func<Tensor, Tensor>>(), "no LoRA");

        // The model's Linear layers: every stored 2-D "<module>.weight".
        var linears = new Dictionary<string, long[]>(StringComparer.Ordinal);
        foreach (var key in baseWeights.StoredKeys)
            if (key.EndsWith(".weight", StringComparison.Ordinal) && baseWeights.StoredShape(key) is { Length: 2 } shape)
                linears[key[..^".weight".Length]] = shape;
        // kohya names: "a.b_c.0" → "a_b_c_0"; two modules with one underscore name would be ambiguous (null).
        var byUnderscore = new Dictionary<string, string?>(StringComparer.Ordinal);
        foreach (var m in linears.Keys)
        {
            string u = m.Replace('.', '_');
            byUnderscore[u] = byUnderscore.ContainsKey(u) ? null : m;
        }

        foreach (var (adapter, scale) in loras)
        {
            if (!double.IsFinite(scale))
                throw new ArgumentException($"LoRA scale for {adapter.Path} must be a finite number, got {scale}.", nameof(loras));
            var unmatched = new List<string>();
            foreach (var module in adapter.Modules)
            {
                string? target = adapter.Layout == LoraLayout.Kohya
                    ? (byUnderscore.TryGetValue(module.Name, out var m) ? m ?? throw Ambiguous(adapter, module.Name, linears.Keys) : null)
                    : (linears.ContainsKey(module.Name) ? module.Name : null);
                if (target is null) { unmatched.Add(module.Name); continue; }
                long[] w = linears[target];
                long outF = module.Up.shape[0], inF = module.Down.shape[1];
                if (w[0] != outF || w[1] != inF)
                    throw new LoraFileException(
                        $"{adapter.WeightFile}: '{target}' is [{w[0]}, {w[1]}] in the transformer ({baseWeights.Description}) but the adapter's B·A is " +
                        $"[{outF}, {inF}]. The adapter was made for another model size; use a LoRA trained for this model.");
                string key = target + ".weight";
                if (!additions.TryGetValue(key, out var list)) additions[key] = list = [];
                list.Add((module.Up, module.Down, scale * module.Factor));
            }
            if (unmatched.Count > 0)
            {
                string shown = string.Join("', '", unmatched.Take(4).Select(n => adapter.Layout == LoraLayout.Kohya ? LoraAdapter.KohyaPrefix + n : n));
                throw new LoraFileException(
                    $"{adapter.WeightFile}: {unmatched.Count} of its {adapter.Modules.Count} modules match no Linear layer of the transformer ({baseWeights.Description}), " +
                    $"e.g. '{shown}'. The adapter was made for another model (a PixArt transformer LoRA names modules like 'transformer_blocks.0.attn1.to_q').");
            }
        }

        var merges = additions.ToDictionary(kv => kv.Key, kv => (Func<Tensor, Tensor>)(w =>
        {
            // W' = W + Σ s·α/r · (B @ A), in float32 on the CPU (w is a private copy, modified in place).
            foreach (var (up, down, mult) in kv.Value)
                w.addmm_(up, down, beta: 1, alpha: (float)mult);   // libtorch takes the scalar as the tensor's float
            return w;
        }), StringComparer.Ordinal);
        string description = "LoRA " + string.Join(" + ", loras.Select(l => l.Adapter.Describe(l.Scale)));
        return baseWeights.WithMerged(merges, description, used =>
        {
            var never = merges.Keys.Where(k => !used.Contains(k)).Order(StringComparer.Ordinal).ToList();
            if (never.Count > 0)
                throw new LoraFileException(
                    $"{description}: the model never loaded {never.Count} adapted weight(s), e.g. '{string.Join("', '", never.Take(4))}', so the adapter would not be applied whole. " +
                    "It targets layers this model does not use.");
        });
    }

    private static LoraFileException Ambiguous(LoraAdapter adapter, string name, IEnumerable<string> modules) => new(
        $"{adapter.WeightFile}: kohya module name '{LoraAdapter.KohyaPrefix}{name}' fits several layers " +
        $"('{string.Join("', '", modules.Where(m => m.Replace('.', '_') == name))}'); save the adapter in the PEFT layout instead.");
}
